//! The server's history, through `MONITOR`: every command the server executed that matters to the
//! check, in the server's own order, across restarts.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::{self, RedisServer};
use crate::workload::Names;
use crate::{PATIENCE, lock_ignoring_poison};

/// What the server executed that matters to the check, in its order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// `SET resource value`, by a script (`fenced_set`) or a client; `epoch` counts server launches.
    ResourceSet {
        epoch: u32,
        value: String,
        by_script: bool,
    },
    /// The fence counter seeded from the server's clock (first use, or after a restart lost it).
    CounterSeed { epoch: u32, seed: u64 },
    /// `ECHO text`: the end-of-run marker.
    Echo(String),
    /// The monitor attached to server lifetime `epoch` (0: the first launch, then one per restart).
    Attached { epoch: u32 },
    /// Any command on a watched key (a semaphore's sorted set; a fair lock's key, queue and
    /// heartbeats), with its arguments.
    Watched { epoch: u32, args: Vec<String> },
}

/// A `MONITOR` connection straight to the server, re-attached after each restart.
pub(crate) struct Monitor {
    resource: String,
    counter: String,
    /// Keys every command on which is recorded ([`Entry::Watched`]).
    watched: Vec<String>,
    entries: Arc<Mutex<Vec<Entry>>>,
    problems: Arc<Mutex<Vec<String>>>,
    current: Mutex<Option<Attachment>>,
    readers: Mutex<Vec<thread::JoinHandle<()>>>,
}

struct Attachment {
    stream: TcpStream,
    client_id: String,
    /// Set when this connection is about to end (server restart, end of run): EOF is no problem then.
    ending: Arc<AtomicBool>,
}

impl Monitor {
    pub(crate) fn new(names: &Names) -> Monitor {
        Monitor {
            resource: names.resource.clone(),
            counter: names.counter.clone(),
            watched: Vec::new(),
            entries: Arc::default(),
            problems: Arc::default(),
            current: Mutex::new(None),
            readers: Mutex::new(Vec::new()),
        }
    }

    /// A monitor that also records every command on `key` (a semaphore's holders).
    pub(crate) fn watching(names: &Names, key: &str) -> Monitor {
        Monitor::watching_all(names, &[key.to_owned()])
    }

    /// A monitor that also records every command on each of `keys` (a fair lock's key and queue).
    pub(crate) fn watching_all(names: &Names, keys: &[String]) -> Monitor {
        Monitor {
            watched: keys.to_vec(),
            ..Monitor::new(names)
        }
    }

    /// Connects to `addr` and starts recording; returns once the server confirmed `MONITOR`.
    pub(crate) fn attach(&self, addr: SocketAddr, epoch: u32) -> io::Result<()> {
        let stream = TcpStream::connect_timeout(&addr, PATIENCE)?;
        stream.set_read_timeout(Some(PATIENCE))?;
        stream.set_write_timeout(Some(PATIENCE))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        (&stream).write_all(&support::encode_command(&["CLIENT", "ID"]))?;
        reader.read_line(&mut line)?;
        let client_id = line
            .trim_end()
            .strip_prefix(':')
            .ok_or_else(|| io::Error::other(format!("CLIENT ID answered {line:?}")))?
            .to_owned();
        line.clear();
        (&stream).write_all(&support::encode_command(&["MONITOR"]))?;
        reader.read_line(&mut line)?;
        if line.trim_end() != "+OK" {
            return Err(io::Error::other(format!("MONITOR answered {line:?}")));
        }
        stream.set_read_timeout(None)?;
        lock_ignoring_poison(&self.entries).push(Entry::Attached { epoch });
        let ending = Arc::new(AtomicBool::new(false));
        let reader = {
            let ending = ending.clone();
            let entries = self.entries.clone();
            let problems = self.problems.clone();
            let resource = self.resource.clone();
            let counter = self.counter.clone();
            let watched = self.watched.clone();
            thread::spawn(move || {
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) if ending.load(Ordering::SeqCst) => return,
                        Ok(0) => {
                            lock_ignoring_poison(&problems).push(format!(
                                "the MONITOR connection of server lifetime {epoch} closed \
                                 unexpectedly: the history may have gaps"
                            ));
                            return;
                        }
                        Err(e) => {
                            lock_ignoring_poison(&problems).push(format!(
                                "the MONITOR connection of server lifetime {epoch} failed: {e}"
                            ));
                            return;
                        }
                        Ok(_) => {}
                    }
                    let Some((by_script, args)) = parse_monitor_line(line.trim_end()) else {
                        continue;
                    };
                    let command = args.first().map(|c| c.to_ascii_lowercase());
                    let entry = match (command.as_deref(), args.get(1), args.get(2)) {
                        (Some("set"), Some(key), Some(value)) if *key == resource => {
                            Entry::ResourceSet {
                                epoch,
                                value: value.clone(),
                                by_script,
                            }
                        }
                        (Some("set"), Some(key), Some(value)) if *key == counter => {
                            Entry::CounterSeed {
                                epoch,
                                seed: value.parse().unwrap_or(0),
                            }
                        }
                        (Some("echo"), Some(text), None) => Entry::Echo(text.clone()),
                        (Some(_), Some(key), _) if watched.contains(key) => Entry::Watched {
                            epoch,
                            args: args.clone(),
                        },
                        _ => continue,
                    };
                    lock_ignoring_poison(&entries).push(entry);
                }
            })
        };
        lock_ignoring_poison(&self.readers).push(reader);
        *lock_ignoring_poison(&self.current) = Some(Attachment {
            stream,
            client_id,
            ending,
        });
        Ok(())
    }

    /// The server's client id of the current `MONITOR` connection.
    pub(crate) fn client_id(&self) -> Option<String> {
        lock_ignoring_poison(&self.current)
            .as_ref()
            .map(|a| a.client_id.clone())
    }

    /// The current connection is about to end (the server is being restarted).
    pub(crate) fn expect_end(&self) {
        if let Some(current) = lock_ignoring_poison(&self.current).take() {
            current.ending.store(true, Ordering::SeqCst);
        }
    }

    /// Waits until everything the server executed so far has been recorded, stops recording, and
    /// returns the history and any problem seen (a monitor connection that ended unexpectedly).
    pub(crate) fn finish(&self, server: &Mutex<RedisServer>) -> (Vec<Entry>, Vec<String>) {
        let marker = format!("chaos-end-{}", uuid::Uuid::new_v4().simple());
        lock_ignoring_poison(server)
            .command(&["ECHO", &marker])
            .expect("ECHO");
        let deadline = Instant::now() + PATIENCE;
        while !lock_ignoring_poison(&self.entries).contains(&Entry::Echo(marker.clone())) {
            assert!(
                Instant::now() < deadline,
                "MONITOR never showed the end marker"
            );
            thread::sleep(Duration::from_millis(10));
        }
        if let Some(current) = lock_ignoring_poison(&self.current).take() {
            current.ending.store(true, Ordering::SeqCst);
            let _ = current.stream.shutdown(Shutdown::Both);
        }
        for reader in std::mem::take(&mut *lock_ignoring_poison(&self.readers)) {
            reader.join().expect("MONITOR reader thread");
        }
        let entries = std::mem::take(&mut *lock_ignoring_poison(&self.entries));
        let problems = std::mem::take(&mut *lock_ignoring_poison(&self.problems));
        (entries, problems)
    }
}

/// Reads a `MONITOR` line such as `+1700000000.123456 [0 lua] "set" "key" "va\"lue"`: whether a script
/// ran the command, and the command's arguments, unquoted.
pub(crate) fn parse_monitor_line(line: &str) -> Option<(bool, Vec<String>)> {
    let line = line.strip_prefix('+')?;
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let by_script = line[open + 1..close].split(' ').nth(1) == Some("lua");
    let mut args = Vec::new();
    let mut bytes = line[close + 1..].bytes();
    loop {
        match bytes.next() {
            None => return Some((by_script, args)),
            Some(b' ') => continue,
            Some(b'"') => {}
            Some(_) => return None,
        }
        let mut arg = Vec::new();
        loop {
            match bytes.next()? {
                b'"' => break,
                b'\\' => match bytes.next()? {
                    b'n' => arg.push(b'\n'),
                    b'r' => arg.push(b'\r'),
                    b't' => arg.push(b'\t'),
                    b'a' => arg.push(7),
                    b'b' => arg.push(8),
                    b'x' => {
                        let hex = [bytes.next()?, bytes.next()?];
                        let hex = std::str::from_utf8(&hex).ok()?;
                        arg.push(u8::from_str_radix(hex, 16).ok()?);
                    }
                    other => arg.push(other),
                },
                other => arg.push(other),
            }
        }
        args.push(String::from_utf8_lossy(&arg).into_owned());
    }
}
