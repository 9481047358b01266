//! Events: what workers record, one line each (a worker process writes them to its output file, and
//! the case reads them back).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Accepted,
    Rejected,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HoldEnd {
    /// The work finished first.
    Done,
    /// `hold` answered `LockError::Lost`, with its reason.
    Lost(String),
    /// `hold` answered some other error (it never should).
    Error(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Release {
    /// `release() == Ok(true)`: the lock was still ours.
    Released,
    /// `release() == Ok(false)`.
    NotOurs,
    /// `release()` failed: no answer either way.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    AcquireFailed {
        worker: String,
        kind: String,
        message: String,
    },
    Acquired {
        worker: String,
        fence: u64,
        token: String,
    },
    Frozen {
        worker: String,
        fence: u64,
    },
    /// A failure (of `acquire`, a write, `hold` or `release`) caused by a call that timed out.
    TimedOut {
        worker: String,
        during: String,
    },
    Write {
        worker: String,
        fence: u64,
        value: String,
        outcome: Outcome,
    },
    End {
        worker: String,
        fence: u64,
        hold: HoldEnd,
        release: Release,
    },
    Done {
        worker: String,
    },
}

impl Event {
    /// One line; free text comes last.
    pub(crate) fn line(&self) -> String {
        match self {
            Event::AcquireFailed {
                worker,
                kind,
                message,
            } => format!("fail {worker} {kind} {message}"),
            Event::Acquired {
                worker,
                fence,
                token,
            } => format!("acq {worker} {fence} {token}"),
            Event::Frozen { worker, fence } => format!("frozen {worker} {fence}"),
            Event::TimedOut { worker, during } => format!("timeout {worker} {during}"),
            Event::Write {
                worker,
                fence,
                value,
                outcome,
            } => {
                let outcome = match outcome {
                    Outcome::Accepted => "acc",
                    Outcome::Rejected => "rej",
                    Outcome::Unknown => "unk",
                };
                format!("write {worker} {fence} {value} {outcome}")
            }
            Event::End {
                worker,
                fence,
                hold,
                release,
            } => {
                let release = match release {
                    Release::Released => "released",
                    Release::NotOurs => "not-ours",
                    Release::Failed => "failed",
                };
                let (hold, reason) = match hold {
                    HoldEnd::Done => ("done", ""),
                    HoldEnd::Lost(reason) => ("lost", reason.as_str()),
                    HoldEnd::Error(message) => ("error", message.as_str()),
                };
                let line = format!("end {worker} {fence} {release} {hold} {reason}");
                line.trim_end().to_owned()
            }
            Event::Done { worker } => format!("done {worker}"),
        }
    }

    pub(crate) fn parse(line: &str) -> Event {
        let Some((tag, rest)) = line.split_once(' ') else {
            bad_line(line)
        };
        let fields = |n: usize| -> Vec<String> {
            let mut fields: Vec<String> = rest.splitn(n, ' ').map(str::to_owned).collect();
            // Only the free text at the end may be missing (an empty reason).
            if fields.len() + 1 == n && tag == "end" {
                fields.push(String::new());
            }
            if fields.len() != n {
                bad_line(line)
            }
            fields
        };
        let number = |text: &str| -> u64 { text.parse().unwrap_or_else(|_| bad_line(line)) };
        match tag {
            "fail" => {
                let [worker, kind, message] = <[String; 3]>::try_from(fields(3)).unwrap();
                Event::AcquireFailed {
                    worker,
                    kind,
                    message,
                }
            }
            "acq" => {
                let [worker, fence, token] = <[String; 3]>::try_from(fields(3)).unwrap();
                Event::Acquired {
                    worker,
                    fence: number(&fence),
                    token,
                }
            }
            "frozen" => {
                let [worker, fence] = <[String; 2]>::try_from(fields(2)).unwrap();
                Event::Frozen {
                    worker,
                    fence: number(&fence),
                }
            }
            "timeout" => {
                let [worker, during] = <[String; 2]>::try_from(fields(2)).unwrap();
                Event::TimedOut { worker, during }
            }
            "write" => {
                let [worker, fence, value, outcome] = <[String; 4]>::try_from(fields(4)).unwrap();
                let outcome = match outcome.as_str() {
                    "acc" => Outcome::Accepted,
                    "rej" => Outcome::Rejected,
                    "unk" => Outcome::Unknown,
                    _ => bad_line(line),
                };
                Event::Write {
                    worker,
                    fence: number(&fence),
                    value,
                    outcome,
                }
            }
            "end" => {
                let [worker, fence, release, hold, reason] =
                    <[String; 5]>::try_from(fields(5)).unwrap();
                let release = match release.as_str() {
                    "released" => Release::Released,
                    "not-ours" => Release::NotOurs,
                    "failed" => Release::Failed,
                    _ => bad_line(line),
                };
                let hold = match hold.as_str() {
                    "done" => HoldEnd::Done,
                    "lost" => HoldEnd::Lost(reason),
                    "error" => HoldEnd::Error(reason),
                    _ => bad_line(line),
                };
                Event::End {
                    worker,
                    fence: number(&fence),
                    hold,
                    release,
                }
            }
            "done" => Event::Done {
                worker: rest.to_owned(),
            },
            _ => bad_line(line),
        }
    }
}

fn bad_line(line: &str) -> ! {
    panic!("unreadable event line {line:?}")
}
