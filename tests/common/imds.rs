//! A fake EC2 instance metadata service (IMDSv2) on loopback: hands out a
//! session token, answers 404 on the spot instance-action path until told
//! to announce an interruption, and counts what it was asked. Stops when
//! dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const TOKEN: &str = "fake-imds-token";

#[derive(Default)]
struct State {
    notice: Mutex<Option<String>>,
    tokens: AtomicUsize,
    checks: AtomicUsize,
    refused: AtomicUsize,
    stop: AtomicBool,
}

pub struct FakeImds {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    state: Arc<State>,
    thread: Option<JoinHandle<()>>,
}

impl FakeImds {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State::default());
        let s = state.clone();
        let thread = std::thread::spawn(move || {
            while !s.stop.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = answer(stream, &s);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            endpoint,
            state,
            thread: Some(thread),
        }
    }

    /// From now on the instance-action path answers with this notice.
    pub fn interrupt(&self, action: &str) {
        let body = serde_json::json!({"action": action, "time": "2026-11-21T12:00:00Z"});
        *self.state.notice.lock().unwrap() = Some(body.to_string());
    }

    /// Session tokens handed out.
    pub fn tokens(&self) -> usize {
        self.state.tokens.load(Ordering::Acquire)
    }

    /// Instance-action reads answered (404 or notice).
    pub fn checks(&self) -> usize {
        self.state.checks.load(Ordering::Acquire)
    }

    /// Requests refused for want of a valid token.
    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::Acquire)
    }
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(mut stream: TcpStream, s: &State) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let mut lines = head.lines();
    let mut request = lines.next().unwrap_or("").split_whitespace();
    let (method, path) = (request.next().unwrap_or(""), request.next().unwrap_or(""));
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let (status, extra, body) = if method == "PUT" && path == "/latest/api/token" {
        if header("x-aws-ec2-metadata-token-ttl-seconds").is_some() {
            s.tokens.fetch_add(1, Ordering::AcqRel);
            (
                "200 OK",
                "x-aws-ec2-metadata-token-ttl-seconds: 21600\r\n",
                TOKEN.to_owned(),
            )
        } else {
            ("400 Bad Request", "", String::new())
        }
    } else if header("x-aws-ec2-metadata-token").as_deref() != Some(TOKEN) {
        s.refused.fetch_add(1, Ordering::AcqRel);
        ("401 Unauthorized", "", String::new())
    } else if method == "GET" && path == "/latest/meta-data/spot/instance-action" {
        s.checks.fetch_add(1, Ordering::AcqRel);
        match s.notice.lock().unwrap().clone() {
            Some(notice) => ("200 OK", "", notice),
            None => ("404 Not Found", "", "Not Found".to_owned()),
        }
    } else {
        ("404 Not Found", "", String::new())
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\n{extra}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
