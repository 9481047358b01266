//! The worker processes of the multi-process case: started from this test binary, waited for, and
//! killed if a failed case leaves them running.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::{ID_ENV, KEY_ENV, OUT_ENV, RESOURCE_ENV, RUN_MS_ENV, URL_ENV};

/// How a multi-process case starts its workers: this test binary running one `#[test]`, told by an
/// environment variable that it is a worker of that case.
pub(crate) struct Launch<'a> {
    /// The worker's `#[test]`, run alone.
    pub(crate) test: &'a str,
    /// The variable (set to `1`) that makes that test a worker.
    pub(crate) role_env: &'a str,
    /// The fault proxy's URL the workers connect through.
    pub(crate) url: &'a str,
    pub(crate) key: &'a str,
    /// The resource the workers write with fences, for the cases that have one.
    pub(crate) resource: Option<&'a str>,
    pub(crate) run_for: Duration,
}

pub(crate) struct WorkerProcess {
    pub(crate) id: String,
    pub(crate) child: Child,
    pub(crate) out: PathBuf,
    pub(crate) log: PathBuf,
}

/// The worker processes; any still running when this is dropped (a failed test) are killed.
#[derive(Default)]
pub(crate) struct Children(pub(crate) Vec<WorkerProcess>);

impl Children {
    /// Starts `count` workers as `launch` says (ids `p0`, `p1`, ...), each writing its events to
    /// `<dir>/<id>.events` and its log to `<dir>/<id>.log`.
    pub(crate) fn spawn(dir: &Path, count: usize, launch: &Launch<'_>) -> Children {
        let exe = std::env::current_exe().expect("current test binary");
        let mut children = Children::default();
        for i in 0..count {
            let id = format!("p{i}");
            let out = dir.join(format!("{id}.events"));
            let log = dir.join(format!("{id}.log"));
            let mut command = Command::new(&exe);
            command
                .args([launch.test, "--exact", "--nocapture", "--test-threads", "1"])
                .env(launch.role_env, "1")
                .env(URL_ENV, launch.url)
                .env(KEY_ENV, launch.key)
                .env(OUT_ENV, &out)
                .env(ID_ENV, &id)
                .env(RUN_MS_ENV, launch.run_for.as_millis().to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&log).expect("worker log file"));
            if let Some(resource) = launch.resource {
                command.env(RESOURCE_ENV, resource);
            }
            let child = command.spawn().expect("spawn a worker process");
            children.0.push(WorkerProcess {
                id,
                child,
                out,
                log,
            });
        }
        children
    }

    /// Every worker's pid and event file: what a freezer picks the process to stop from.
    pub(crate) fn stoppable(&self) -> Vec<(u32, PathBuf)> {
        self.0
            .iter()
            .map(|worker| (worker.child.id(), worker.out.clone()))
            .collect()
    }

    /// Every line of every worker's event file, worker by worker.
    pub(crate) fn event_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for worker in &self.0 {
            let text = fs::read_to_string(&worker.out)
                .unwrap_or_else(|e| panic!("{} wrote no events: {e}", worker.id));
            lines.extend(text.lines().map(str::to_owned));
        }
        lines
    }

    /// Waits for every worker to exit by itself, successfully.
    pub(crate) fn wait_all(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for worker in &mut self.0 {
            let status = loop {
                if let Some(status) = worker.child.try_wait().expect("try_wait") {
                    break status;
                }
                assert!(
                    Instant::now() < deadline,
                    "worker {} did not stop by itself; log:\n{}",
                    worker.id,
                    read_log(&worker.log)
                );
                thread::sleep(Duration::from_millis(50));
            };
            assert!(
                status.success(),
                "worker {} failed ({status}); log:\n{}",
                worker.id,
                read_log(&worker.log)
            );
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for worker in &mut self.0 {
            // SIGKILL works on a stopped process too.
            let _ = worker.child.kill();
            let _ = worker.child.wait();
        }
    }
}

/// The worker processes' event and log files; removed when dropped, whether the case passed or not
/// (a failure message quotes what matters).
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new() -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("redlease-chaos-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        TempDir(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn read_log(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}
