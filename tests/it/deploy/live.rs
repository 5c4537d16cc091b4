//! deploy/ held against the real thing: `kyc migrate`, run with the Job's environment,
//! declares on the local broker exactly what definitions.json says; the pods of the base and
//! the services of compose, run as the real binary with their files' environment (listen
//! addresses moved to loopback port 0, the Secret's placeholders replaced by the tests'
//! values), answer their probes and health checks where the files look, and export every
//! metric the alerts and the dashboard use.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use kyc::queue::Topology;
use serde_json::{Value, json};

use super::*;
use crate::harness::amqp::DeleteOnDrop;
use crate::harness::seed::{decision, signed, time, verifications_with_sessions};
use crate::harness::spawned::Spawned;
use crate::harness::{
    AMQP_URL, ARCHIVE_KEY, EU_API_KEY, EU_SECRET, JWT_SECRET, TestDb, URL_KEY, eventually,
    unique_prefix,
};

/// The tests' value for each key of the Secret template.
fn test_secret(key: &str, database_url: &str) -> String {
    match key {
        "KYC_DATABASE_URL" => database_url,
        "KYC_AMQP_URL" => AMQP_URL,
        "KYC_VERIFF_API_KEY" => EU_API_KEY,
        "KYC_VERIFF_SHARED_SECRETS" => EU_SECRET,
        "KYC_URL_ENCRYPTION_KEY" => URL_KEY,
        "KYC_ARCHIVE_ENCRYPTION_KEY" => ARCHIVE_KEY,
        "KYC_JWT_SECRET" => JWT_SECRET,
        // The ConfigMap's placeholders.
        "KYC_VERIFF_CALLBACK_URL" => "https://app.example/verified",
        "KYC_JWT_AUDIENCE" => crate::harness::JWT_AUDIENCE,
        other => panic!("{SECRET_TEMPLATE} has a new key {other}: give the tests a value for it"),
    }
    .to_owned()
}

/// A local deployment: a database of its own and a queue prefix, deleted afterwards.
struct Deployment {
    db: TestDb,
    prefix: String,
    topology: Topology,
    _queues: DeleteOnDrop,
}

impl Deployment {
    /// With the base's ConfigMap (its retry delays): a migrated database, or a name only.
    async fn new(migrated: bool) -> Self {
        kyc::tls::install();
        let db = match migrated {
            true => TestDb::create().await,
            false => TestDb::reserve(),
        };
        let prefix = unique_prefix();
        let mut env = config_map("kyc-config");
        env.insert("KYC_QUEUE_PREFIX".into(), prefix.clone());
        let topology = parse_as_kyc(&env, &["migrate".to_owned()])
            .expect("the ConfigMap's settings")
            .config
            .topology();
        Self {
            db,
            prefix,
            _queues: DeleteOnDrop(topology.clone()),
            topology,
        }
    }

    /// `env` made to run here: this deployment's database, broker and prefix, and each
    /// listener on loopback port 0. Returns the environment and the listen variables by the
    /// port they had (the containerPort).
    fn localise(
        &self,
        env: &BTreeMap<String, String>,
    ) -> (BTreeMap<String, String>, BTreeMap<u16, &'static str>) {
        let mut env = env.clone();
        for key in ["KYC_DATABASE_URL", "KYC_AMQP_URL"] {
            env.insert(key.into(), test_secret(key, &self.db.url));
        }
        env.insert("KYC_QUEUE_PREFIX".into(), self.prefix.clone());
        let mut listeners = BTreeMap::new();
        for variable in ["KYC_HTTP_ADDR", "KYC_OPS_ADDR"] {
            if let Some(addr) = listen_addr(&env, variable) {
                listeners.insert(addr.port(), variable);
                env.insert(variable.into(), "127.0.0.1:0".into());
            }
        }
        (env, listeners)
    }

    /// The real binary with exactly this environment (nothing of the test's own `KYC_…`).
    fn command(env: &BTreeMap<String, String>, args: &[String]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_kyc"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("KYC_") {
                command.env_remove(name);
            }
        }
        command.envs(env).args(args);
        command
    }

    /// A container's environment with the Secret's and the ConfigMap's placeholders
    /// (`REPLACE_ME`, which kyc refuses to start with) replaced by the tests' values.
    fn filled(&self, env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut env = env.clone();
        for key in template_secret("kyc-secrets").into_keys() {
            env.insert(key.clone(), test_secret(&key, &self.db.url));
        }
        for (key, value) in env.iter_mut() {
            if value.contains("REPLACE_ME") {
                *value = test_secret(key, &self.db.url);
            }
        }
        env
    }

    /// Runs a k8s container, its placeholders filled.
    async fn start_pod(&self, container: &K8sContainer) -> Pod {
        let env = self.filled(&container.env);
        self.start(&container.at, &env, &container.args).await
    }

    async fn start(&self, at: &str, env: &BTreeMap<String, String>, args: &[String]) -> Pod {
        let (env, listeners) = self.localise(env);
        let mut process = Spawned::start(at, Self::command(&env, args));
        let mut local = BTreeMap::new();
        for (port, variable) in listeners {
            let addr = match variable {
                "KYC_HTTP_ADDR" => process.http_addr().await,
                _ => process.ops_addr().await,
            };
            local.insert(port, addr);
        }
        Pod { process, local }
    }
}

/// A kyc process started from a deployment file, and where its ports are here.
struct Pod {
    process: Spawned,
    /// containerPort → the local address of that listener.
    local: BTreeMap<u16, SocketAddr>,
}

impl Pod {
    fn url(&self, container_port: u16, path: &str) -> String {
        let addr = self.local.get(&container_port).unwrap_or_else(|| {
            panic!(
                "{}: nothing listens on port {container_port}",
                self.process.name()
            )
        });
        format!("http://{addr}{path}")
    }
}

/// `rabbitmqctl list_… --formatter json` as JSON.
fn rabbitmqctl(args: &[&str]) -> Vec<Value> {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .args(["--formatter", "json", "-q"])
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        output.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("rabbitmqctl prints JSON")
}

/// The live objects of the deployment, named under `prefix` again: rabbitmqctl's arguments
/// (`[[name, type, value]]`) as a map, and every string that began with our prefix renamed.
fn normalise(value: &Value, ours: &str, theirs: &str) -> Value {
    match value {
        Value::String(s) => match s.strip_prefix(ours) {
            Some(rest) if rest.starts_with('.') => Value::String(format!("{theirs}{rest}")),
            _ => value.clone(),
        },
        Value::Array(items)
            if items
                .iter()
                .all(|i| i.as_array().is_some_and(|t| t.len() == 3))
                && !items.is_empty() =>
        {
            let map = items
                .iter()
                .map(|t| {
                    (
                        t[0].as_str().expect("an argument name").to_owned(),
                        normalise(&t[2], ours, theirs),
                    )
                })
                .collect();
            Value::Object(map)
        }
        Value::Array(items) if items.is_empty() => json!({}),
        Value::Array(items) => {
            Value::Array(items.iter().map(|i| normalise(i, ours, theirs)).collect())
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), normalise(v, ours, theirs)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Fails with what differs: names on one side only, and each object that differs.
fn assert_same(what: &str, declared: &BTreeMap<String, Value>, defined: &BTreeMap<String, Value>) {
    let mut problems = Vec::new();
    for (name, object) in declared {
        match defined.get(name) {
            None => problems.push(format!(
                "{name} is declared but not in definitions.json: {object}"
            )),
            Some(d) if d != object => {
                problems.push(format!("{name}: declared {object}, defined {d}"))
            }
            Some(_) => {}
        }
    }
    for name in defined.keys().filter(|n| !declared.contains_key(*n)) {
        problems.push(format!(
            "{name} is in definitions.json but kyc does not declare it"
        ));
    }
    assert!(problems.is_empty(), "{what}:\n{}", problems.join("\n"));
}

/// `(name → object)` of the objects whose `key` starts with `prefix.`, renamed.
fn live(objects: Vec<Value>, key: &str, ours: &str, theirs: &str) -> BTreeMap<String, Value> {
    objects
        .iter()
        .filter(|o| {
            o[key]
                .as_str()
                .is_some_and(|n| n.starts_with(&format!("{ours}.")))
        })
        .map(|o| {
            let o = normalise(o, ours, theirs);
            (o[key].as_str().expect("a name").to_owned(), o)
        })
        .collect()
}

/// The fields of `definitions.json`'s objects that rabbitmqctl also lists, by `key`.
fn defined(objects: &Value, key: &str, fields: &[&str]) -> BTreeMap<String, Value> {
    objects
        .as_array()
        .expect("a list")
        .iter()
        .map(|o| {
            assert_eq!(
                o["vhost"], "/",
                "definitions.json: kyc's vhost is the default one"
            );
            let picked = fields
                .iter()
                .map(|f| (f.to_string(), o[*f].clone()))
                .collect();
            (
                o[key].as_str().expect("a name").to_owned(),
                Value::Object(picked),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_json_is_the_topology_kyc_migrate_declares() {
    let deployment = Deployment::new(false).await;
    let job = k8s_containers()
        .into_iter()
        .find(|c| c.role() == "migrate")
        .expect("the migrate Job");
    let theirs = job
        .env
        .get("KYC_QUEUE_PREFIX")
        .cloned()
        .expect("the ConfigMap names the prefix");
    let env = deployment.filled(&job.env);
    let (env, _) = deployment.localise(&env);
    let migrate = Deployment::command(&env, &job.args)
        .output()
        .expect("kyc migrate runs");
    assert!(
        migrate.status.success(),
        "{}: {}",
        job.at,
        String::from_utf8_lossy(&migrate.stderr)
    );

    let ours = deployment.prefix.as_str();
    let definitions = json("deploy/rabbitmq/definitions.json");
    let fields = ["name", "durable", "auto_delete", "arguments"];
    let queues = live(
        rabbitmqctl(&["list_queues", "name", "durable", "auto_delete", "arguments"]),
        "name",
        ours,
        &theirs,
    );
    assert_same(
        "queues",
        &queues,
        &defined(&definitions["queues"], "name", &fields),
    );
    let fields = [
        "name",
        "type",
        "durable",
        "auto_delete",
        "internal",
        "arguments",
    ];
    let exchanges = live(
        rabbitmqctl(&[
            "list_exchanges",
            "name",
            "type",
            "durable",
            "auto_delete",
            "internal",
            "arguments",
        ]),
        "name",
        ours,
        &theirs,
    );
    assert_same(
        "exchanges",
        &exchanges,
        &defined(&definitions["exchanges"], "name", &fields),
    );
    // Bindings of our exchanges (the default exchange's implicit ones are not definitions).
    let listed = rabbitmqctl(&[
        "list_bindings",
        "source_name",
        "destination_name",
        "destination_kind",
        "routing_key",
        "arguments",
    ]);
    let key = |b: &Value| {
        format!(
            "{} → {} ({})",
            b["source"], b["destination"], b["routing_key"]
        )
    };
    let bindings: BTreeMap<String, Value> = listed
        .iter()
        .filter(|b| {
            b["source_name"]
                .as_str()
                .is_some_and(|s| s.starts_with(&format!("{ours}.")))
        })
        .map(|b| {
            let b = normalise(b, ours, &theirs);
            let b = json!({
                "source": b["source_name"],
                "destination": b["destination_name"],
                "destination_type": b["destination_kind"],
                "routing_key": b["routing_key"],
                "arguments": b["arguments"],
            });
            (key(&b), b)
        })
        .collect();
    let bindings_defined: BTreeMap<String, Value> = definitions["bindings"]
        .as_array()
        .expect("bindings")
        .iter()
        .map(|b| {
            let b = json!({
                "source": b["source"],
                "destination": b["destination"],
                "destination_type": b["destination_type"],
                "routing_key": b["routing_key"],
                "arguments": b["arguments"],
            });
            (key(&b), b)
        })
        .collect();
    assert_same("bindings", &bindings, &bindings_defined);
    // Every setting is a queue argument: a policy would be a second source of truth.
    assert_eq!(
        definitions["policies"],
        json!([]),
        "definitions.json has no policies"
    );
    // The names are the program's own for the ConfigMap's prefix and delays.
    let config_topology = parse_as_kyc(&job.env, &job.args)
        .expect("the Job's settings")
        .config
        .topology();
    let mut names = config_topology.queues();
    names.sort();
    assert_eq!(names, queues.keys().cloned().collect::<Vec<_>>());
    assert_eq!(deployment.topology.queues().len(), names.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pods_answer_their_probes_where_the_manifests_look() {
    let deployment = Deployment::new(true).await;
    let http = reqwest::Client::new();
    let containers = k8s_containers();
    let mut pods = BTreeMap::new();
    for c in containers.iter().filter(|c| c.role() != "migrate") {
        let pod = deployment.start_pod(c).await;
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            let get = &c.container[probe]["httpGet"];
            if get.is_null() {
                continue;
            }
            let port = c.resolve_port(&get["port"]).expect("a containerPort");
            let url = pod.url(port, get["path"].as_str().expect("a path"));
            // Ready once the broker is connected; a path the router does not serve is 404.
            eventually(
                Duration::from_secs(30),
                &format!("{}: {probe} {url}", c.at),
                || async {
                    let status = http.get(&url).send().await.ok()?.status();
                    assert_ne!(status, 404, "{}: {probe} {url} is not served", c.at);
                    status.is_success().then_some(())
                },
            )
            .await;
        }
        // Prometheus scrapes the annotated port and path; no other listener serves /metrics.
        let annotations = c.pod_annotations();
        let port: u16 = annotations["prometheus.io/port"].parse().expect("a port");
        let path = &annotations["prometheus.io/path"];
        let scrape = http
            .get(pod.url(port, path))
            .send()
            .await
            .expect("a scrape");
        assert_eq!(scrape.status(), 200, "{}: {path} on {port}", c.at);
        let text = scrape.text().await.expect("metrics text");
        assert!(
            text.contains("# TYPE kyc_"),
            "{}: Prometheus text on {port}{path}",
            c.at
        );
        for other in pod.local.keys().filter(|p| **p != port) {
            let status = http
                .get(pod.url(*other, "/metrics"))
                .send()
                .await
                .expect("a request")
                .status();
            assert_eq!(
                status, 404,
                "{}: /metrics is served on port {other} too",
                c.at
            );
        }
        pods.insert(c.at.clone(), pod);
    }
    // The Service's targetPort is where the webhooks are received (unsigned: 401).
    for (_, service) in k8s_objects()
        .into_iter()
        .filter(|(_, d)| d["kind"] == "Service")
    {
        for c in containers
            .iter()
            .filter(|c| selects(&service["spec"]["selector"], c.pod_labels()))
        {
            for port in service["spec"]["ports"].as_array().expect("ports") {
                let target = c
                    .resolve_port(&port["targetPort"])
                    .expect("a containerPort");
                let url = pods[&c.at].url(target, "/webhooks/veriff/decision");
                let status = http
                    .post(&url)
                    .body("{}")
                    .send()
                    .await
                    .expect("a webhook")
                    .status();
                assert_eq!(
                    status, 401,
                    "Service {}: {url} is the webhook receiver",
                    service["metadata"]["name"]
                );
            }
        }
    }
    for pod in pods.values_mut() {
        pod.process.assert_running();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_migrates_then_its_services_pass_the_image_health_check() {
    let deployment = Deployment::new(false).await;
    let image = dockerfile();
    let services = compose_kyc_services();
    let migrate = services
        .iter()
        .find(|s| s.role() == "migrate")
        .expect("compose migrates");
    let (env, _) = deployment.localise(&migrate.env);
    let output = Deployment::command(&env, &migrate.args)
        .output()
        .expect("kyc migrate runs");
    assert!(
        output.status.success(),
        "{COMPOSE} migrate: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let health = reqwest::Url::parse(&image.healthcheck[2]).expect("the health check's URL");
    let health_port = health.port_or_known_default().expect("a port");
    for s in services.iter().filter(|s| s.role() != "migrate") {
        let pod = deployment
            .start(&format!("{COMPOSE} {}", s.name), &s.env, &s.args)
            .await;
        if s.service["healthcheck"]["disable"] != true {
            // The image's own HEALTHCHECK command, pointed at where its port is here.
            let url = pod.url(health_port, health.path());
            let mut check: Vec<String> = image.healthcheck[1..].to_vec();
            check[1] = url.clone();
            eventually(
                Duration::from_secs(30),
                &format!("{}: {url} healthy", s.name),
                || {
                    let passed = Deployment::command(&BTreeMap::new(), &check)
                        .output()
                        .expect("kyc healthcheck runs")
                        .status
                        .success();
                    async move { passed.then_some(()) }
                },
            )
            .await;
        }
        // What compose publishes is a listener of the process.
        for published in s.service["ports"].as_array().into_iter().flatten() {
            let port: u16 = published
                .as_str()
                .and_then(|p| p.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .expect("a container port");
            let status = reqwest::get(pod.url(port, "/healthz"))
                .await
                .expect("reachable")
                .status();
            assert_eq!(status, 200, "{COMPOSE} {} publishes {published}", s.name);
        }
    }
}

/// What an expression uses that the live `/metrics` texts do not have.
fn missing_from(exposition: &Exposition, at: &str, expr: &str) -> Vec<String> {
    let uses = promql_uses(expr);
    let mut problems = Vec::new();
    for name in &uses.metrics {
        if exposition.family_of(name).is_none() {
            problems.push(format!(
                "{at}: {name} is exported by neither serve nor worker"
            ));
        }
    }
    for m in &uses.matchers {
        let values: Vec<&String> = exposition
            .labels_of(&m.metric)
            .filter_map(|l| l.get(&m.label))
            .collect();
        let found = match m.op.as_str() {
            "=" => values.iter().any(|v| **v == m.value),
            "=~" => values
                .iter()
                .any(|v| simple_regex_match(&m.value, v).unwrap_or(true)),
            _ => !values.is_empty(),
        };
        if !found {
            problems.push(format!(
                "{at}: no series {}{{{}{}\"{}\"}} (its {} values: {values:?})",
                m.metric, m.label, m.op, m.value, m.label
            ));
        }
    }
    for label in &uses.grouping {
        let has = uses
            .metrics
            .iter()
            .any(|name| exposition.labels_of(name).any(|l| l.contains_key(label)));
        if !has {
            problems.push(format!(
                "{at}: groups by `{label}`, which none of {:?} has",
                uses.metrics
            ));
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_the_dashboard_use_is_exported() {
    let deployment = Deployment::new(true).await;
    let http = reqwest::Client::new();
    let containers = k8s_containers();
    let mut pods = Vec::new();
    let mut receiver = None;
    for c in containers.iter().filter(|c| c.role() != "migrate") {
        let pod = deployment.start_pod(c).await;
        let annotations = c.pod_annotations();
        let port: u16 = annotations["prometheus.io/port"].parse().expect("a port");
        let scrape = pod.url(port, &annotations["prometheus.io/path"]);
        let ready = &c.container["readinessProbe"]["httpGet"];
        let ready = pod.url(
            c.resolve_port(&ready["port"]).expect("a containerPort"),
            ready["path"].as_str().expect("a path"),
        );
        eventually(
            Duration::from_secs(30),
            &format!("{ready} ready"),
            || async {
                http.get(&ready)
                    .send()
                    .await
                    .ok()?
                    .status()
                    .is_success()
                    .then_some(())
            },
        )
        .await;
        if c.role() == "serve" {
            let api = listen_addr(&c.env, "KYC_HTTP_ADDR")
                .expect("an address")
                .port();
            receiver = Some(pod.url(api, "/webhooks/veriff/decision"));
        }
        pods.push((pod, scrape));
    }
    let receiver = receiver.expect("a serve pod");

    // A little of everything the rules look at: an applied decision, a refused signature,
    // and a signed body without a session id, which ends dead-lettered.
    let policy = kyc::state_machine::Policy::default();
    verifications_with_sessions(&deployment.db.url, &policy, &["deploy-metrics".to_owned()]).await;
    let approved = decision("deploy-metrics", Some("a1"), "approved", &time(1), None);
    let unparseable = b"signed, but not JSON".to_vec();
    for (body, signature, status) in [
        (&approved, signed(&approved), 200),
        (&approved, "00".repeat(32), 401),
        (&unparseable, signed(&unparseable), 200),
    ] {
        let response = http
            .post(&receiver)
            .header("x-hmac-signature", signature)
            .body(body.clone())
            .send()
            .await
            .expect("a webhook");
        assert_eq!(response.status(), status);
    }
    let db = deployment.db.client().await;
    eventually(
        Duration::from_secs(30),
        "the decision applied and the dead letter recorded",
        || async {
            let applied: i64 = db
                .query_one("SELECT count(*) FROM inputs WHERE source = 'webhook'", &[])
                .await
                .ok()?
                .get(0);
            let dead: i64 = db
                .query_one("SELECT count(*) FROM dead_letters", &[])
                .await
                .ok()?
                .get(0);
            (applied == 1 && dead == 1).then_some(())
        },
    )
    .await;

    let expressions: Vec<(String, String)> = alert_expressions()
        .into_iter()
        .chain(dashboard_expressions())
        .collect();
    assert!(
        expressions.len() > 15,
        "alerts and dashboard expressions: {expressions:?}"
    );
    // Gauges are sampled and counters counted a moment after the facts: wait for the texts
    // to show everything, and say exactly what is missing if they never do.
    let deadline = Instant::now() + Duration::from_secs(30);
    let problems = loop {
        let mut exposition = Exposition::default();
        for (_, scrape) in &pods {
            let text = http
                .get(scrape)
                .send()
                .await
                .expect("a scrape")
                .text()
                .await
                .expect("text");
            exposition.merge(Exposition::parse(&text));
        }
        let problems: Vec<String> = expressions
            .iter()
            .flat_map(|(at, expr)| missing_from(&exposition, at, expr))
            .collect();
        if problems.is_empty() || Instant::now() > deadline {
            break problems;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
