//! The worker processes of the multi-process case: started from this test binary, waited for, and
//! killed if a failed case leaves them running.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

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
