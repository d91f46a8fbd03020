//! A Strata broker started for one run: temporary data dir, free loopback ports.
//!
//! The load generator starts the release `strata` it measures, so a run needs nothing set up
//! beforehand, and reads what only the broker knows — object-store calls from `/metrics`,
//! peak memory from `/proc/<pid>/status` (`VmHWM`, the kernel's high-water mark of resident
//! memory, so no sampling can miss a peak).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Object-store counters read from the broker's `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StoreCounts {
    /// PUT calls.
    pub put: u64,
    /// GET calls.
    pub get: u64,
    /// Bytes written.
    pub put_bytes: u64,
    /// Bytes read.
    pub get_bytes: u64,
}

impl StoreCounts {
    /// The calls made between `earlier` and `self`.
    pub fn since(self, earlier: StoreCounts) -> StoreCounts {
        StoreCounts {
            put: self.put.saturating_sub(earlier.put),
            get: self.get.saturating_sub(earlier.get),
            put_bytes: self.put_bytes.saturating_sub(earlier.put_bytes),
            get_bytes: self.get_bytes.saturating_sub(earlier.get_bytes),
        }
    }
}

/// A running broker owned by the load generator.
pub struct Broker {
    bin: PathBuf,
    dir: tempfile::TempDir,
    kafka_port: u16,
    http_port: u16,
    quic_port: u16,
    extra: Vec<String>,
    child: Option<Child>,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Finds the `strata` binary: the flag, else beside this executable (both live in
/// `target/release/`).
pub fn find_binary(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    let me = std::env::current_exe().context("cannot find this executable's path")?;
    let beside = me.with_file_name("strata");
    if beside.is_file() {
        return Ok(beside);
    }
    bail!(
        "no strata binary beside {}: run `cargo build --release` first, or pass --strata-bin",
        me.display()
    )
}

impl Broker {
    /// Starts a broker with `extra` flags and waits until it is ready.
    pub fn start(bin: PathBuf, extra: Vec<String>) -> Result<Broker> {
        let mut broker = Broker {
            bin,
            dir: tempfile::Builder::new()
                .prefix("strata-loadtest")
                .tempdir()?,
            kafka_port: free_port()?,
            http_port: free_port()?,
            quic_port: free_udp_port()?,
            extra,
            child: None,
        };
        broker.spawn()?;
        Ok(broker)
    }

    fn spawn(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.dir.path().join("broker.log"))?;
        let child = Command::new(&self.bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--kafka-addr")
            .arg(format!("127.0.0.1:{}", self.kafka_port))
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .arg("--quic-addr")
            .arg(format!("127.0.0.1:{}", self.quic_port))
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!(
                    "broker exited with {status}; see {}",
                    self.log_path().display()
                );
            }
            if self.get("/healthz").is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "broker not ready after 60 s; see {}",
            self.log_path().display()
        )
    }

    /// The broker's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    /// `HOST:PORT` for Kafka clients.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.kafka_port)
    }

    /// The native (QUIC) front end and the CA to trust.
    pub fn native(&self) -> crate::native::Endpoint {
        crate::native::Endpoint {
            addr: format!("127.0.0.1:{}", self.quic_port),
            ca: self.dir.path().join("data/tls/ca.pem"),
        }
    }

    fn get(&self, path: &str) -> Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.http_port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        if !body.starts_with("HTTP/1.0 200") && !body.starts_with("HTTP/1.1 200") {
            bail!("GET {path}: {}", body.lines().next().unwrap_or(""));
        }
        Ok(body)
    }

    /// The broker's object-store counters now.
    pub fn store_counts(&self) -> Result<StoreCounts> {
        let text = self.get("/metrics")?;
        let mut values: HashMap<(String, String), u64> = HashMap::new();
        for line in text
            .lines()
            .filter(|l| l.starts_with("strata_object_store_"))
        {
            let Some((name_labels, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Some((name, labels)) = name_labels.split_once('{') else {
                continue;
            };
            let op = labels
                .trim_end_matches('}')
                .split(',')
                .find_map(|kv| kv.strip_prefix("op="))
                .map(|v| v.trim_matches('"').to_string())
                .unwrap_or_default();
            if let Ok(v) = value.parse::<f64>() {
                values.insert((name.to_string(), op), v as u64);
            }
        }
        let v = |name: &str, op: &str| {
            values
                .get(&(name.to_string(), op.to_string()))
                .copied()
                .unwrap_or(0)
        };
        Ok(StoreCounts {
            put: v("strata_object_store_requests_total", "put"),
            get: v("strata_object_store_requests_total", "get"),
            put_bytes: v("strata_object_store_bytes_total", "put"),
            get_bytes: v("strata_object_store_bytes_total", "get"),
        })
    }

    /// Peak resident memory of the current broker process, from the kernel.
    /// The value of an unlabelled counter or gauge in `/metrics` (0 when absent).
    pub fn metric(&self, name: &str) -> Result<f64> {
        let text = self.get("/metrics")?;
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .find_map(|v| v.trim().parse().ok())
            .unwrap_or(0.0))
    }

    pub fn peak_rss(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Stops the broker with SIGTERM (it flushes) and waits for it.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill()?;
        bail!("broker did not stop within 60 s of SIGTERM; killed it")
    }

    /// Restarts the broker on the same data dir and ports; with `cold`, the read cache is
    /// deleted first so every read must come from the object store.
    pub fn restart(&mut self, cold: bool) -> Result<()> {
        self.stop()?;
        if cold {
            let cache = self.dir.path().join("data").join("cache");
            if cache.exists() {
                std::fs::remove_dir_all(&cache)?;
            }
        }
        self.spawn()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
