//! moto's S3-compatible server (PyPI `moto[server]`) on a loopback port, stopped when dropped.
//! Shared with the system tests (`tests/it`), which include this file by path.

use std::io::{Read, Seek, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Credentials moto accepts (it checks none); real-looking so that requests are signed.
pub const ACCESS_KEY_ID: &str = "AKIAGANTRYTEST";
pub const SECRET_ACCESS_KEY: &str = "gantry-test-secret";

pub struct MotoServer {
    pub port: u16,
    child: Child,
}

impl MotoServer {
    /// Starts `python3 -m moto.server` and waits until it answers. Panics, naming what is
    /// missing, when moto is not installed: these tests must not pass without their server.
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let mut output = tempfile::tempfile().expect("a temporary file for moto's output");
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(output.try_clone().unwrap()))
            .stderr(Stdio::from(output.try_clone().unwrap()))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run python3 for moto's S3 server: {e}"));
        let mut server = MotoServer { port, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                let mut text = String::new();
                let _ = output.rewind();
                let _ = output.read_to_string(&mut text);
                panic!(
                    "moto's S3 server (`python3 -m moto.server`) exited ({status}): is \
                     moto[server] installed? `python3 -m pip install 'moto[server]'`, or \
                     scripts/install-deps. Its output:\n{text}"
                );
            }
            if server
                .request("GET", "/")
                .is_ok_and(|(status, _)| status == 200)
            {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "moto's S3 server did not answer on 127.0.0.1:{port} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket.
    pub fn create_bucket(&self, name: &str) {
        let (status, body) = self
            .request("PUT", &format!("/{name}"))
            .expect("moto answers");
        assert_eq!(status, 200, "creating bucket {name}: {body}");
    }

    /// The keys in a bucket (up to 1,000).
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let (status, body) = self
            .request("GET", &format!("/{bucket}?list-type=2"))
            .expect("moto answers");
        assert_eq!(status, 200, "listing {bucket}: {body}");
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>").map(|(key, _)| key.to_owned()))
            .collect()
    }

    /// One unsigned HTTP/1.1 request (moto checks no signatures): status and body.
    fn request(&self, method: &str, path: &str) -> std::io::Result<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.port
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not HTTP: {answer:?}")))?;
        let body = answer
            .split_once("\r\n\r\n")
            .map_or("", |(_, body)| body)
            .to_owned();
        Ok((status, body))
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
