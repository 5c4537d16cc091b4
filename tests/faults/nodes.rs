//! RabbitMQ nodes the fault suite stops and starts: the machine's main node (which every other
//! test shares: started again whatever happens), and a three-node cluster of the suite's own
//! beside it (stopped by name whatever happens, never touching the main node's membership).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::rabbit::{run, run_blocking};

/// How long a node may take to come up.
const NODE_START: Duration = Duration::from_secs(90);

/// The main node, `rabbit@localhost`, stopped with `stop_app`. Dropping the guard starts it
/// again (a test that panics included) and waits until it takes connections.
pub struct MainNode(());

impl MainNode {
    pub fn guard() -> Self {
        Self(())
    }

    pub async fn stop_app(&self) {
        run("rabbitmqctl", &["-q", "stop_app"]).await;
    }

    pub async fn start_app(&self) {
        tokio::task::spawn_blocking(start_main_node)
            .await
            .expect("start_app's thread");
    }
}

impl Drop for MainNode {
    fn drop(&mut self) {
        start_main_node();
    }
}

/// `rabbitmqctl start_app` (harmless on a running node), then waits for its port.
fn start_main_node() {
    let started = run_blocking("rabbitmqctl", &["-q", "start_app"]);
    if !started.status.success() {
        eprintln!(
            "rabbitmqctl start_app failed: {}",
            String::from_utf8_lossy(&started.stderr)
        );
    }
    let deadline = Instant::now() + NODE_START;
    while Instant::now() < deadline {
        let check = run_blocking("rabbitmq-diagnostics", &["-q", "check_port_connectivity"]);
        if check.status.success() {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("the main RabbitMQ node did not take connections again within {NODE_START:?}");
}

/// One node of the suite's own (a cluster's, or the TLS node).
pub struct Node {
    pub name: String,
    pub amqp_port: u16,
    dir: PathBuf,
    /// Extra lines of its rabbitmq.conf (a TLS listener).
    extra_config: String,
}

impl Node {
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }

    /// `rabbitmqctl -n NODE ARGS…`; fails the test if it fails.
    pub async fn ctl(&self, args: &[&str]) -> String {
        let mut all = vec!["-q", "-n", self.name.as_str()];
        all.extend_from_slice(args);
        run("rabbitmqctl", &all).await
    }

    pub async fn stop_app(&self) {
        self.ctl(&["stop_app"]).await;
    }

    pub async fn start_app(&self) {
        self.ctl(&["start_app"]).await;
        self.ctl(&["await_startup"]).await;
    }

    /// Starts the node detached as the `rabbitmq` user, with the main node's Erlang cookie
    /// (the same `HOME`), its own ports, data, logs, configuration and no plugins.
    fn launch(&self) {
        std::fs::create_dir_all(&self.dir).expect("node folder");
        let config = self.dir.join("rabbitmq.conf");
        std::fs::write(
            &config,
            format!(
                "listeners.tcp.local = 127.0.0.1:{}\nloopback_users = none\n{}",
                self.amqp_port, self.extra_config
            ),
        )
        .expect("node configuration");
        // Its own (empty) environment file, so that /etc/rabbitmq/rabbitmq-env.conf (which
        // names the main node) is not read.
        std::fs::write(self.dir.join("rabbitmq-env.conf"), "").expect("env file");
        std::fs::write(self.dir.join("enabled_plugins"), "[].\n").expect("plugins file");
        chown_to_rabbitmq(&self.dir);
        let dist_port = (self.amqp_port + 20_000).to_string();
        let path = |name: &str| self.dir.join(name).display().to_string();
        let status = Command::new("runuser")
            .args(["-u", "rabbitmq", "--", "env"])
            .arg("HOME=/var/lib/rabbitmq")
            .arg(format!("RABBITMQ_NODENAME={}", self.name))
            .arg(format!(
                "RABBITMQ_CONF_ENV_FILE={}",
                path("rabbitmq-env.conf")
            ))
            .arg(format!("RABBITMQ_CONFIG_FILE={}", config.display()))
            .arg(format!("RABBITMQ_DIST_PORT={dist_port}"))
            .arg(format!("RABBITMQ_MNESIA_BASE={}", path("mnesia")))
            .arg(format!("RABBITMQ_LOG_BASE={}", path("log")))
            .arg(format!("RABBITMQ_PID_FILE={}", path("pid")))
            .arg(format!(
                "RABBITMQ_ENABLED_PLUGINS_FILE={}",
                path("enabled_plugins")
            ))
            .arg("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}")
            .arg("/usr/lib/rabbitmq/bin/rabbitmq-server")
            .arg("-detached")
            .current_dir(&self.dir)
            .status()
            .expect("rabbitmq-server starts");
        assert!(
            status.success(),
            "rabbitmq-server -detached for {}",
            self.name
        );
    }

    /// Waits until the node answers and its application is up.
    async fn await_startup(&self) {
        let deadline = Instant::now() + NODE_START;
        loop {
            let name = self.name.clone();
            let up = tokio::task::spawn_blocking(move || {
                run_blocking("rabbitmqctl", &["-q", "-n", &name, "await_startup"])
                    .status
                    .success()
            })
            .await
            .expect("await_startup's thread");
            if up {
                return;
            }
            // Not registered with epmd yet: the node is still booting.
            assert!(
                Instant::now() < deadline,
                "{} did not start within {NODE_START:?} (logs in {})",
                self.name,
                self.dir.join("log").display()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stops the Erlang node by name and waits for its process; kills that process (by the
    /// id in its pid file) if it is still there.
    fn stop(&self) {
        let pid_file = self.pid_file().display().to_string();
        let _ = run_blocking("rabbitmqctl", &["-q", "-n", &self.name, "stop", &pid_file]);
        if let Some(pid) = std::fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            && Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn chown_to_rabbitmq(dir: &Path) {
    let status = Command::new("chown")
        .args(["-R", "rabbitmq:rabbitmq"])
        .arg(dir)
        .status()
        .expect("chown runs");
    assert!(status.success(), "chown {}", dir.display());
}

/// Three RabbitMQ nodes `kycc1..3@localhost` on 127.0.0.1:5691..5693, clustered, under a
/// temporary folder owned by the `rabbitmq` user. Dropping it stops the three by name and
/// removes the folder, even after a panic.
pub struct Cluster {
    pub nodes: Vec<Node>,
    root: PathBuf,
}

impl Cluster {
    pub async fn start() -> Self {
        let root =
            std::env::temp_dir().join(format!("kyc-cluster-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&root).expect("cluster folder");
        let nodes = (1..=3)
            .map(|n| Node {
                name: format!("kycc{n}@localhost"),
                amqp_port: 5690 + n,
                dir: root.join(format!("kycc{n}")),
                extra_config: String::new(),
            })
            .collect();
        // The guard exists before any node does, so that every one started is stopped.
        let cluster = Self { nodes, root };
        chown_to_rabbitmq(&cluster.root);
        for node in &cluster.nodes {
            node.launch();
        }
        for node in &cluster.nodes {
            node.await_startup().await;
        }
        let first = cluster.nodes[0].name.clone();
        for node in &cluster.nodes[1..] {
            node.ctl(&["stop_app"]).await;
            node.ctl(&["join_cluster", &first]).await;
            node.start_app().await;
        }
        let status = cluster.nodes[0]
            .ctl(&["cluster_status", "--formatter", "json"])
            .await;
        let status: serde_json::Value = serde_json::from_str(&status).expect("cluster_status JSON");
        let running = status["running_nodes"].as_array().map_or(0, Vec::len);
        assert_eq!(running, 3, "three nodes running in the cluster: {status}");
        cluster
    }

    /// `amqp://…:5691/%2f,amqp://…:5692/%2f,amqp://…:5693/%2f`: every node, as KYC_AMQP_URL.
    pub fn amqp_urls(&self) -> String {
        self.nodes
            .iter()
            .map(Node::amqp_url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("{name} is not a node of the cluster"))
    }

    /// `(members, leader)` of a quorum queue, as the cluster's first running node sees it.
    pub async fn quorum_queue(&self, via: &Node, queue: &str) -> (Vec<String>, String) {
        let listed = via
            .ctl(&[
                "list_queues",
                "name",
                "members",
                "leader",
                "--formatter",
                "json",
            ])
            .await;
        let queues: Vec<serde_json::Value> =
            serde_json::from_str(&listed).expect("list_queues JSON");
        let found = queues
            .iter()
            .find(|q| q["name"] == queue)
            .unwrap_or_else(|| panic!("{queue} is not declared: {listed}"));
        let members = found["members"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let leader = found["leader"].as_str().unwrap_or_default().to_owned();
        (members, leader)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let stops: Vec<_> = self
            .nodes
            .iter()
            .map(|node| {
                let node = Node {
                    name: node.name.clone(),
                    amqp_port: node.amqp_port,
                    dir: node.dir.clone(),
                    extra_config: String::new(),
                };
                std::thread::spawn(move || node.stop())
            })
            .collect();
        for stop in stops {
            let _ = stop.join();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A RabbitMQ node `kycc9@localhost` with a TLS listener on 127.0.0.1:5696 (and plain AMQP on
/// 5695), its certificate issued by a CA made for the test, for `localhost` only. Dropping it
/// stops the node by name and removes its folder, even after a panic.
pub struct TlsNode {
    pub node: Node,
    pub tls_port: u16,
    /// The CA that issued the node's certificate (PEM).
    pub ca: PathBuf,
    /// Another CA, which issued nothing the node shows.
    pub other_ca: PathBuf,
    root: PathBuf,
}

impl TlsNode {
    pub async fn start() -> Self {
        let root = std::env::temp_dir().join(format!("kyc-tls-{}", uuid::Uuid::new_v4().simple()));
        let certs = root.join("certs");
        std::fs::create_dir_all(&certs).expect("certificate folder");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&certs)
                .output()
                .expect("openssl runs");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for ca in ["ca", "other-ca"] {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                &format!("/CN=kyc test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
            ]);
        }
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(
            certs.join("server.ext"),
            "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .expect("extensions");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ]);
        let tls_port = 5696;
        let path = |name: &str| certs.join(name).display().to_string();
        let node = Node {
            name: "kycc9@localhost".to_owned(),
            amqp_port: 5695,
            dir: root.join("kycc9"),
            extra_config: format!(
                "listeners.ssl.local = 127.0.0.1:{tls_port}\n\
                 ssl_options.cacertfile = {}\n\
                 ssl_options.certfile = {}\n\
                 ssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                path("ca.pem"),
                path("server.pem"),
                path("server.key")
            ),
        };
        let tls = Self {
            node,
            tls_port,
            ca: certs.join("ca.pem"),
            other_ca: certs.join("other-ca.pem"),
            root,
        };
        chown_to_rabbitmq(&tls.root);
        tls.node.launch();
        tls.node.await_startup().await;
        tls
    }

    /// `amqps://guest:guest@HOST:5696/%2f`, with `cacertfile` when given.
    pub fn amqps_url(&self, host: &str, ca: Option<&Path>) -> String {
        let query = ca.map_or_else(String::new, |ca| format!("?cacertfile={}", ca.display()));
        format!("amqps://guest:guest@{host}:{}/%2f{query}", self.tls_port)
    }
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        self.node.stop();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// `pgrep -a beam.smp`: the Erlang VMs running now (the suite's own are named `kycc…`).
pub fn beam_processes() -> String {
    let listed = run_blocking("pgrep", &["-a", "beam.smp"]);
    String::from_utf8_lossy(&listed.stdout).into_owned()
}
