//! A 3-node NATS JetStream cluster on loopback for the cluster tests: Debian's `nats-server` on ports picked
//! here, routes between the three, store directories under a scratch directory. Every server is killed by
//! pid when the value drops (and its store removed).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Three `nats-server` processes forming one JetStream cluster.
#[derive(Debug)]
pub struct Nats {
    dir: PathBuf,
    ports: Vec<u16>,
    routes: Vec<u16>,
    servers: Vec<Option<Child>>,
}

/// The `nats-server` binary, if installed.
pub fn nats_server() -> Option<PathBuf> {
    crate::on_path("nats-server").map(PathBuf::from).or_else(|| {
        ["/usr/sbin/nats-server", "/usr/local/bin/nats-server"].iter().map(PathBuf::from).find(|p| p.exists())
    })
}

impl Nats {
    /// Start three servers; None (after saying why) when nats-server is not installed, outside CI.
    pub fn start(name: &str) -> Option<Nats> {
        if nats_server().is_none() {
            crate::skip_unless_ci(&format!(
                "{name}: nats-server not installed (scripts/setup.sh installs it)"
            ));
            return None;
        }
        let mut n = Nats {
            dir: crate::scratch(&format!("nats-{name}")),
            ports: Vec::new(),
            routes: Vec::new(),
            servers: Vec::new(),
        };
        // The ports are free when picked and bound by nats-server a moment later: in between, another
        // process (a parallel test, an outgoing connection's ephemeral port) can take one, and that server
        // exits. Then all three start again on fresh ports.
        let mut why = String::new();
        for attempt in 1..=3 {
            n.ports = (0..3).map(|_| crate::free_tcp_port()).collect();
            n.routes = (0..3).map(|_| crate::free_tcp_port()).collect();
            match (0..3).try_for_each(|i| n.spawn(i).map(|c| n.servers.push(Some(c)))) {
                Ok(()) => return Some(n),
                Err(e) => {
                    eprintln!("{name}: NATS cluster, attempt {attempt} of 3: {e}");
                    why = e;
                    for i in 0..n.servers.len() {
                        n.kill(i);
                    }
                    n.servers.clear();
                    // Stores that knew the old ports' peers start empty again.
                    for i in 0..3 {
                        let _ = std::fs::remove_dir_all(n.dir.join(format!("n{i}")));
                    }
                }
            }
        }
        panic!("{name}: no NATS cluster after 3 attempts: {why}");
    }

    /// Start server `i` and wait until it accepts client connections; on failure, why (with its log).
    fn spawn(&self, i: usize) -> Result<Child, String> {
        let routes: Vec<String> = self.routes.iter().map(|p| format!("nats-route://127.0.0.1:{p}")).collect();
        let conf = self.dir.join(format!("n{i}.conf"));
        std::fs::write(
            &conf,
            format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: \"{}\", max_memory_store: 64MB, max_file_store: 1GB }}\ncluster {{ name: canvas-test, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                self.ports[i],
                self.dir.join(format!("n{i}")).display(),
                self.routes[i],
                routes.join(", ")
            ),
        )
        .expect("write nats config");
        let log_path = self.dir.join(format!("n{i}.log"));
        let log = std::fs::File::create(&log_path).expect("nats log");
        let mut c = Command::new(nats_server().expect("nats-server"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        let tail = || {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(8)..].join("\n")
        };
        let end = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.ports[i])).is_err() {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(format!(
                    "nats-server n{i} exited ({status}) before listening on {}:\n{}",
                    self.ports[i],
                    tail()
                ));
            }
            if Instant::now() >= end {
                let _ = c.kill();
                let _ = c.wait();
                return Err(format!(
                    "nats-server n{i} did not listen on {} within 10 s:\n{}",
                    self.ports[i],
                    tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Something else may hold the port it was given (then the connect reached that, and this server
        // exits on its failed bind): still running a moment later, or it is not up.
        std::thread::sleep(Duration::from_millis(200));
        if let Ok(Some(status)) = c.try_wait() {
            return Err(format!("nats-server n{i} exited ({status}) right after starting:\n{}", tail()));
        }
        Ok(c)
    }

    /// The client URLs of the three servers.
    pub fn urls(&self) -> Vec<String> {
        self.ports.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect()
    }

    /// The URLs as one `--cluster` argument.
    pub fn cluster_arg(&self) -> String {
        self.urls().join(",")
    }

    /// Kill server `i` (SIGKILL, by pid).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start server `i` again on its ports and store (after [`Nats::kill`]).
    pub fn restart(&mut self, i: usize) {
        assert!(self.servers[i].is_none(), "n{i} is running");
        self.servers[i] = Some(self.spawn(i).unwrap_or_else(|e| panic!("restart: {e}")));
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
