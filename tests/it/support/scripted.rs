//! A hand-written HTTP/1.1 server for tests that must decide every reply:
//! any status and headers, a delay (a slow receiver, or one slower than
//! the client's timeout), or a TCP reset instead of an answer.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request as the scripted server read it.
#[derive(Debug, Clone)]
pub struct Req {
    pub at: Instant,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        ledgerline::receiver::find_header(&self.headers, name)
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub fn order(&self) -> String {
        self.json()["order_id"].as_str().unwrap_or("").to_owned()
    }
    pub fn key(&self) -> String {
        self.header("idempotency-key").unwrap_or("").to_owned()
    }
}

/// What the scripted server does with a request.
pub enum Reply {
    Respond {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
        delay: Duration,
    },
    /// Close the connection with a TCP reset, answering nothing.
    Reset,
}

pub fn reply(status: u16, body: Value) -> Reply {
    Reply::Respond {
        status,
        headers: vec![],
        body: body.to_string().into_bytes(),
        delay: Duration::ZERO,
    }
}

pub type Handler = dyn Fn(&Req, &[Req]) -> Reply + Send + Sync;

/// A hand-written HTTP/1.1 server (keep-alive, Content-Length bodies) that
/// lets a test decide every reply, including resets and hangs.
pub struct Scripted {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Req>>>,
}

impl Scripted {
    pub async fn start(handler: impl Fn(&Req, &[Req]) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log: Arc<Mutex<Vec<Req>>> = Arc::default();
        let handler: Arc<Handler> = Arc::new(handler);
        let l = log.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve_conn(sock, l.clone(), handler.clone()));
            }
        });
        Self { addr, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }

    pub fn requests_for(&self, order: &str) -> Vec<Req> {
        self.requests()
            .into_iter()
            .filter(|r| r.order() == order)
            .collect()
    }
}

async fn serve_conn(mut sock: TcpStream, log: Arc<Mutex<Vec<Req>>>, handler: Arc<Handler>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let target = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("/")
            .to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        buf.drain(..head_end + 4);
        while buf.len() < len {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..len).collect();
        let req = Req {
            at: Instant::now(),
            path: target,
            headers,
            body,
        };
        let action = {
            let mut log = log.lock().unwrap();
            let a = handler(&req, &log);
            log.push(req);
            a
        };
        match action {
            Reply::Reset => {
                let _ = sock.set_zero_linger();
                return;
            }
            Reply::Respond {
                status,
                headers,
                body,
                delay,
            } => {
                tokio::time::sleep(delay).await;
                let mut out = format!(
                    "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                    axum::http::StatusCode::from_u16(status)
                        .ok()
                        .and_then(|s| s.canonical_reason())
                        .unwrap_or("Whatever"),
                    body.len()
                );
                for (n, v) in headers {
                    out.push_str(&format!("{n}: {v}\r\n"));
                }
                out.push_str("\r\n");
                let mut bytes = out.into_bytes();
                bytes.extend_from_slice(&body);
                if sock.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        }
    }
}
