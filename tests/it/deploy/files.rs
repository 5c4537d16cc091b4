//! The files under deploy/ read as data, and held against the program's own definitions:
//! its settings (clap), its subcommands, the names of its queues.

use std::collections::{BTreeMap, BTreeSet};

use clap::CommandFactory;
use kyc::config::REQUIRED_OUTSIDE_DEV;
use kyc::queue::Topology;

use super::*;

#[test]
fn every_yaml_and_json_file_under_deploy_parses() {
    let mut parsed = BTreeMap::<&str, usize>::new();
    for file in deploy_files() {
        let name = file.rsplit('/').next().unwrap_or_default();
        let kind = match name.rsplit_once('.').map(|(_, ext)| ext) {
            Some("yaml" | "yml") => {
                let documents = parse_yaml(&read(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
                assert!(!documents.is_empty(), "{file} holds no document");
                "yaml"
            }
            Some("json") => {
                let _: serde_json::Value =
                    serde_json::from_str(&read(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
                "json"
            }
            // Read by the checks below (the Dockerfile), or not data (docs, rabbitmq.conf).
            Some("md" | "conf") => "other",
            None if name == "Dockerfile" => "other",
            _ => panic!("{file}: a kind of file these checks do not know; add a check for it"),
        };
        *parsed.entry(kind).or_default() += 1;
    }
    // The base (7), compose, the alert rules; the RabbitMQ definitions and the dashboard.
    assert!(parsed.get("yaml") >= Some(&9), "{parsed:?}");
    assert!(parsed.get("json") >= Some(&2), "{parsed:?}");
}

/// Where each variable the deployment files set is set.
fn every_variable_set() -> Vec<(String, String)> {
    let mut set = Vec::new();
    for (file, doc) in k8s_objects() {
        let data = match doc["kind"].as_str() {
            Some("ConfigMap") => &doc["data"],
            Some("Secret") => &doc["stringData"],
            _ => continue,
        };
        for key in string_map(data).into_keys() {
            // kyc-tls holds files, not settings.
            if doc["metadata"]["name"] != "kyc-tls" {
                set.push((key, file.clone()));
            }
        }
    }
    for file in ["deploy/k8s/configmap.yaml", SECRET_TEMPLATE] {
        for key in commented_keys(file) {
            set.push((key, format!("{file} (a comment)")));
        }
    }
    for container in k8s_containers() {
        for key in container.env.into_keys() {
            set.push((key, container.at.clone()));
        }
    }
    for service in compose_kyc_services() {
        for key in service.env.into_keys() {
            set.push((key, format!("{COMPOSE} service {}", service.name)));
        }
    }
    for key in dockerfile().env.into_keys() {
        set.push((key, "deploy/Dockerfile".to_owned()));
    }
    set
}

#[test]
fn every_variable_the_deployment_sets_is_a_setting_and_the_required_ones_are_set() {
    let settings = settings();
    assert!(settings.len() > 20, "clap lists the settings: {settings:?}");
    let unknown: Vec<String> = every_variable_set()
        .into_iter()
        .filter(|(key, _)| !settings.contains_key(key))
        .map(|(key, at)| format!("{key} ({at})"))
        .collect();
    assert!(
        unknown.is_empty(),
        "variables that are not kyc settings (a typo, or a setting renamed): {unknown:?}"
    );

    // Every variable of every kyc container, with its command, as the program parses them.
    let k8s = k8s_containers();
    let compose = compose_kyc_services();
    let runs: Vec<(String, &BTreeMap<String, String>, &[String])> = k8s
        .iter()
        .map(|c| (c.at.clone(), &c.env, c.args.as_slice()))
        .chain(
            compose
                .iter()
                .map(|s| (format!("{COMPOSE} {}", s.name), &s.env, s.args.as_slice())),
        )
        .collect();
    for (at, env, args) in &runs {
        if let Err(e) = parse_as_kyc(env, args) {
            panic!("{at}: kyc refuses its environment or command:\n{e}");
        }
    }

    // What `kyc serve` cannot start without outside --dev is set wherever it runs.
    let mut serving = 0;
    for (at, env, args) in &runs {
        if !matches!(args.first().map(String::as_str), Some("serve" | "run")) {
            continue;
        }
        serving += 1;
        for alternatives in REQUIRED_OUTSIDE_DEV {
            assert!(
                alternatives.iter().any(|v| env.contains_key(*v)),
                "{at} sets none of {alternatives:?}, which kyc serve needs"
            );
        }
        let config = parse_as_kyc(env, args).expect("parsed above").config;
        // Placeholders (REPLACE_ME) pass these; the keys' format is checked for compose below.
        assert!(
            config.integrations().is_ok(),
            "{at}: the Veriff integrations"
        );
        assert!(config.jwt().is_ok(), "{at}: the bearer token settings");
    }
    assert!(serving >= 2, "kyc serve runs in the base and in compose");

    // Compose runs with the values written in it: every check of start-up passes.
    let serve = compose
        .iter()
        .find(|s| s.role() == "serve")
        .expect("compose runs kyc serve");
    let config = parse_as_kyc(&serve.env, &serve.args)
        .expect("parsed above")
        .config;
    let addr = config.http_addr;
    assert!(
        config.archive_cipher().is_ok(),
        "compose's KYC_ARCHIVE_ENCRYPTION_KEY"
    );
    assert!(
        config.url_cipher().is_ok(),
        "compose's KYC_URL_ENCRYPTION_KEY"
    );
    assert!(
        config.callback_url(addr).is_ok(),
        "compose's KYC_VERIFF_CALLBACK_URL"
    );
}

/// `kyc` with these arguments is a valid command line of the program.
fn assert_kyc_command(at: &str, args: &[String]) {
    let name = args
        .first()
        .unwrap_or_else(|| panic!("{at}: no kyc subcommand"));
    assert!(
        kyc::cli::Cli::command().find_subcommand(name).is_some(),
        "{at}: `kyc {name}` is not a subcommand"
    );
    let argv = std::iter::once("kyc".to_owned()).chain(args.iter().cloned());
    if let Err(e) = kyc::cli::Cli::command().try_get_matches_from(argv) {
        panic!("{at}: kyc {}: {}", args.join(" "), e.render());
    }
}

#[test]
fn the_entrypoint_and_every_command_are_kyc_subcommands() {
    let image = dockerfile();
    assert_eq!(
        image.entrypoint,
        ["kyc"],
        "the image's entrypoint is the binary"
    );
    assert_kyc_command("deploy/Dockerfile CMD", &image.cmd);
    let (binary, health) = image.healthcheck.split_first().expect("a HEALTHCHECK");
    assert_eq!(binary, "kyc", "the health check uses the binary itself");
    assert_eq!(health.first().map(String::as_str), Some("healthcheck"));
    assert_kyc_command("deploy/Dockerfile HEALTHCHECK", health);

    let k8s = k8s_containers();
    let roles: BTreeSet<&str> = k8s.iter().map(K8sContainer::role).collect();
    assert_eq!(roles, BTreeSet::from(["migrate", "serve", "worker"]));
    for container in &k8s {
        assert_kyc_command(&container.at, &container.args);
    }
    let compose = compose_kyc_services();
    let roles: BTreeSet<&str> = compose.iter().map(ComposeService::role).collect();
    assert_eq!(roles, BTreeSet::from(["migrate", "serve", "worker"]));
    for service in &compose {
        assert_kyc_command(&format!("{COMPOSE} {}", service.name), &service.args);
    }
}

/// The listeners of a kyc process in `env`: (KYC_HTTP_ADDR, KYC_OPS_ADDR).
fn listeners(
    env: &BTreeMap<String, String>,
) -> (std::net::SocketAddr, Option<std::net::SocketAddr>) {
    (
        listen_addr(env, "KYC_HTTP_ADDR").expect("KYC_HTTP_ADDR has a default"),
        listen_addr(env, "KYC_OPS_ADDR"),
    )
}

#[test]
fn ports_and_probes_are_the_listeners_the_configuration_opens() {
    let image = dockerfile();
    let mut container_ports = BTreeSet::new();
    for c in k8s_containers().iter().filter(|c| c.role() != "migrate") {
        let (http, ops) = listeners(&c.env);
        for addr in std::iter::once(http).chain(ops) {
            assert!(
                !addr.ip().is_loopback(),
                "{}: listens on {addr}, which the kubelet and the Service cannot reach",
                c.at
            );
        }
        let listening: BTreeSet<u16> = std::iter::once(http.port())
            .chain(ops.map(|a| a.port()))
            .collect();
        let declared: BTreeSet<u16> = c.ports().into_values().collect();
        assert_eq!(
            declared, listening,
            "{}: containerPorts are the ports of KYC_HTTP_ADDR and KYC_OPS_ADDR",
            c.at
        );
        container_ports.extend(declared);

        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            let get = &c.container[probe]["httpGet"];
            assert_eq!(get["path"], path, "{}: {probe} path", c.at);
            assert!(
                c.resolve_port(&get["port"]).is_some(),
                "{}: {probe} port {} is no containerPort",
                c.at,
                get["port"]
            );
        }
        // /metrics is on KYC_OPS_ADDR when set, else on KYC_HTTP_ADDR.
        let metrics_port = ops.unwrap_or(http).port();
        let annotations = c.pod_annotations();
        assert_eq!(
            annotations.get("prometheus.io/scrape").map(String::as_str),
            Some("true"),
            "{}",
            c.at
        );
        assert_eq!(
            annotations.get("prometheus.io/port"),
            Some(&metrics_port.to_string()),
            "{}: Prometheus scrapes the port that serves /metrics",
            c.at
        );
        assert_eq!(
            annotations.get("prometheus.io/path").map(String::as_str),
            Some("/metrics"),
            "{}",
            c.at
        );
        if c.role() == "serve" {
            assert!(
                ops.is_some(),
                "{}: /metrics on KYC_OPS_ADDR, apart from the public listener",
                c.at
            );
        }
    }
    assert_eq!(
        image.expose, container_ports,
        "the image EXPOSEs the ports the pods declare"
    );

    // Each Service reaches the public listener of the serve pods it selects, never /metrics.
    let containers = k8s_containers();
    let mut services = 0;
    for (_, service) in k8s_objects()
        .into_iter()
        .filter(|(_, d)| d["kind"] == "Service")
    {
        services += 1;
        let name = &service["metadata"]["name"];
        let selected: Vec<&K8sContainer> = containers
            .iter()
            .filter(|c| selects(&service["spec"]["selector"], c.pod_labels()))
            .collect();
        assert!(!selected.is_empty(), "Service {name} selects no pod");
        for c in selected {
            assert_eq!(
                c.role(),
                "serve",
                "Service {name} sends traffic to {}",
                c.at
            );
            let (http, _) = listeners(&c.env);
            for port in service["spec"]["ports"].as_array().expect("ports") {
                assert_eq!(
                    c.resolve_port(&port["targetPort"]),
                    Some(http.port()),
                    "Service {name}: targetPort {} is KYC_HTTP_ADDR's port of {}",
                    port["targetPort"],
                    c.at
                );
            }
        }
    }
    assert!(services >= 1, "the base has the serve Service");

    // Compose publishes the listeners, on loopback only (its secrets are public), and the
    // image's health check reaches the listener of every service that keeps it.
    let (health_url, health_port) = {
        let url = reqwest::Url::parse(&image.healthcheck[2]).expect("the health check's URL");
        (
            url.path().to_owned(),
            url.port_or_known_default().expect("a port"),
        )
    };
    assert_eq!(health_url, "/healthz");
    assert_eq!(
        listen_addr(&image.env, "KYC_HTTP_ADDR").map(|a| a.port()),
        Some(health_port),
        "the HEALTHCHECK follows the image's KYC_HTTP_ADDR"
    );
    for (name, service) in compose()["services"].as_object().expect("services") {
        for published in service["ports"].as_array().into_iter().flatten() {
            let published = published.as_str().expect("\"host:port:container\"");
            assert!(
                published.starts_with("127.0.0.1:"),
                "{COMPOSE} {name} publishes {published} beyond loopback"
            );
        }
    }
    for s in compose_kyc_services() {
        let published: Vec<u16> = s.service["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let p = p.as_str().expect("a port mapping");
                p.rsplit(':')
                    .next()
                    .and_then(|c| c.parse().ok())
                    .expect("a container port")
            })
            .collect();
        if s.role() == "migrate" {
            assert!(published.is_empty(), "{COMPOSE} migrate listens nowhere");
            assert_eq!(
                s.service["healthcheck"]["disable"], true,
                "{COMPOSE} migrate serves no health check"
            );
            continue;
        }
        let (http, ops) = listeners(&s.env);
        assert!(
            !http.ip().is_loopback(),
            "{COMPOSE} {}: KYC_HTTP_ADDR {http} is unreachable from the host",
            s.name
        );
        let listening: BTreeSet<u16> = std::iter::once(http.port())
            .chain(ops.map(|a| a.port()))
            .collect();
        for port in published {
            assert!(
                listening.contains(&port),
                "{COMPOSE} {} publishes {port}, where kyc does not listen",
                s.name
            );
        }
        if s.service["healthcheck"]["disable"] != true {
            assert_eq!(
                http.port(),
                health_port,
                "{COMPOSE} {}: the image's health check port",
                s.name
            );
        }
    }
}

#[test]
fn the_base_refers_only_to_what_it_and_the_secret_template_define() {
    let objects = k8s_objects();
    let containers = k8s_containers();
    let deployments = |name: &str| {
        containers
            .iter()
            .filter(|c| c.at == format!("Deployment {name}"))
            .count()
    };

    // The kustomization lists every manifest but the Secret template.
    let kustomization = yaml("deploy/k8s/kustomization.yaml").remove(0);
    let resources: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| format!("deploy/k8s/{}", r.as_str().expect("a file")))
        .collect();
    let manifests: BTreeSet<String> = deploy_files()
        .into_iter()
        .filter(|f| f.starts_with("deploy/k8s/") && f.ends_with(".yaml"))
        .filter(|f| !f.ends_with("/kustomization.yaml") && f != SECRET_TEMPLATE)
        .collect();
    assert_eq!(
        resources, manifests,
        "kustomization.yaml lists every manifest but the template"
    );

    for (file, doc) in &objects {
        let kind = doc["kind"].as_str().unwrap_or_default();
        let name = &doc["metadata"]["name"];
        match kind {
            "HorizontalPodAutoscaler" => {
                let target = &doc["spec"]["scaleTargetRef"];
                assert_eq!(target["kind"], "Deployment", "{file}: HPA {name}");
                let target = target["name"].as_str().expect("a target");
                assert_eq!(deployments(target), 1, "{file}: HPA {name} scales {target}");
            }
            "PodDisruptionBudget" => {
                let selector = &doc["spec"]["selector"]["matchLabels"];
                let n = containers
                    .iter()
                    .filter(|c| selects(selector, c.pod_labels()))
                    .count();
                assert_eq!(n, 1, "{file}: PDB {name} selects one workload");
            }
            "ScaledObject" => {
                let target = doc["spec"]["scaleTargetRef"]["name"]
                    .as_str()
                    .expect("a target");
                let worker = containers
                    .iter()
                    .find(|c| c.at == format!("Deployment {target}"));
                let worker = worker.unwrap_or_else(|| {
                    panic!("{file}: ScaledObject {name} scales {target}, no Deployment")
                });
                assert_eq!(worker.role(), "worker", "{file}: KEDA scales the worker");
                // The queue KEDA watches is the one the worker consumes.
                let config = parse_as_kyc(&worker.env, &worker.args)
                    .expect("the worker's settings")
                    .config;
                let topology: Topology = config.topology();
                for trigger in doc["spec"]["triggers"].as_array().expect("triggers") {
                    assert_eq!(
                        trigger["metadata"]["queueName"].as_str(),
                        Some(topology.main_queue().as_str()),
                        "{file}: KEDA's queue is the worker's under KYC_QUEUE_PREFIX"
                    );
                    let auth = trigger["authenticationRef"]["name"]
                        .as_str()
                        .expect("an authenticationRef");
                    assert!(
                        objects
                            .iter()
                            .any(|(_, d)| d["kind"] == "TriggerAuthentication"
                                && d["metadata"]["name"] == auth),
                        "{file}: TriggerAuthentication {auth}"
                    );
                }
            }
            "TriggerAuthentication" => {
                for reference in doc["spec"]["secretTargetRef"]
                    .as_array()
                    .expect("secretTargetRef")
                {
                    let secret = reference["name"].as_str().expect("a Secret");
                    let key = reference["key"].as_str().expect("a key");
                    assert!(
                        template_secret(secret).contains_key(key),
                        "{file}: {secret}/{key} is in the template"
                    );
                }
            }
            _ => {}
        }
    }

    // Secret volumes name Secrets of the template, and every file a setting points at under
    // a mounted Secret is one of its keys.
    for c in &containers {
        let pod = &c.workload["spec"]["template"]["spec"];
        for volume in pod["volumes"].as_array().into_iter().flatten() {
            let Some(secret) = volume["secret"]["secretName"].as_str() else {
                continue;
            };
            let keys = template_secret(secret);
            let mount = c.container["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["name"] == volume["name"])
                .unwrap_or_else(|| panic!("{}: volume {} is not mounted", c.at, volume["name"]));
            let dir = format!("{}/", mount["mountPath"].as_str().expect("a mountPath"));
            for value in c.env.values() {
                for (at, _) in value.match_indices(&dir) {
                    let file: String = value[at + dir.len()..]
                        .chars()
                        .take_while(|ch| ch.is_ascii_alphanumeric() || "._-".contains(*ch))
                        .collect();
                    assert!(
                        keys.contains_key(&file),
                        "{}: {dir}{file} is not a key of Secret {secret}",
                        c.at
                    );
                }
            }
        }
    }
}

/// GitHub's anchor of a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_has_a_severity_a_duration_and_a_runbook_section() {
    let runbook = read("docs/RUNBOOK.md");
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## ").or_else(|| l.strip_prefix("### ")))
        .map(anchor)
        .collect();
    let rules = yaml("deploy/prometheus/alerts.yaml");
    let mut alerts = 0;
    for group in rules[0]["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            alerts += 1;
            let name = rule["alert"].as_str().expect("an alerting rule");
            assert!(
                rule["expr"].as_str().is_some_and(|e| e.contains("kyc_")),
                "{name}: expr"
            );
            let severity = rule["labels"]["severity"].as_str();
            assert!(
                matches!(severity, Some("warning" | "critical")),
                "{name}: severity {severity:?}"
            );
            let duration = rule["for"].as_str().expect("a `for`");
            assert!(
                kyc::config::parse_duration(duration).is_ok(),
                "{name}: for {duration}"
            );
            assert!(
                rule["annotations"]["summary"].is_string(),
                "{name}: summary"
            );
            let url = rule["annotations"]["runbook_url"]
                .as_str()
                .expect("a runbook_url");
            let (file, section) = url.split_once('#').expect("docs/RUNBOOK.md#section");
            assert_eq!(file, "docs/RUNBOOK.md", "{name}");
            assert!(
                anchors.contains(section),
                "{name}: docs/RUNBOOK.md has no section #{section} (it has {anchors:?})"
            );
        }
    }
    assert!(alerts >= 7, "the runbook's situations each have an alert");
}

#[test]
fn termination_grace_outlasts_the_drain() {
    let http = kyc::http::SHUTDOWN_TIMEOUT.as_secs();
    let worker = kyc::worker::DRAIN_DEADLINE.as_secs();
    for c in k8s_containers().iter().filter(|c| c.role() != "migrate") {
        let pod = &c.workload["spec"]["template"]["spec"];
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
        let pre_stop: u64 = match c.container["lifecycle"]["preStop"]["exec"]["command"].as_array()
        {
            Some(command) if command[0] == "sleep" => command[1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("sleep N"),
            Some(command) => panic!("{}: a preStop this check does not know: {command:?}", c.at),
            None => 0,
        };
        let drain = match c.role() {
            // The Service must stop sending first: serve pauses before SIGTERM.
            "serve" => {
                assert!(
                    pre_stop > 0,
                    "{}: a preStop pause lets the endpoints drop the pod first",
                    c.at
                );
                http
            }
            _ => http.max(worker),
        };
        assert!(
            grace > pre_stop + drain,
            "{}: terminationGracePeriodSeconds {grace} is not longer than preStop {pre_stop} s + the drain {drain} s",
            c.at
        );
    }
    for s in compose_kyc_services()
        .iter()
        .filter(|s| s.role() != "migrate")
    {
        let grace = s.service["stop_grace_period"].as_str().unwrap_or("10s");
        let grace = kyc::config::parse_duration(grace)
            .expect("a duration")
            .as_secs();
        assert!(
            grace > http.max(worker),
            "{COMPOSE} {}: stop_grace_period {grace} s",
            s.name
        );
    }
}

/// The database and broker URLs of each kyc container in `runs`, as the drivers read them
/// (kyc's own pool and lapin's URI parser; nothing connects).
fn urls_the_drivers_refuse(runs: &[(String, BTreeMap<String, String>)]) -> Vec<String> {
    let mut refused = Vec::new();
    for (at, env) in runs {
        if let Some(url) = env.get("KYC_DATABASE_URL")
            && let Err(e) = kyc::storage::Database::check_url(url)
        {
            refused.push(format!("{at}: KYC_DATABASE_URL: {e}"));
        }
        if let Some(urls) = env.get("KYC_AMQP_URL") {
            for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
                if let Err(e) = url.parse::<lapin::uri::AMQPUri>() {
                    refused.push(format!("{at}: KYC_AMQP_URL: {e}"));
                }
            }
        }
    }
    refused
}

#[test]
fn compose_urls_are_ones_the_drivers_accept() {
    let runs: Vec<(String, BTreeMap<String, String>)> = compose_kyc_services()
        .into_iter()
        .map(|s| (format!("{COMPOSE} {}", s.name), s.env))
        .collect();
    let refused = urls_the_drivers_refuse(&runs);
    assert!(refused.is_empty(), "{}", refused.join("\n"));
}

/// The template's URLs ask for TLS as DESIGN section 8 says (`sslmode=verify-full` with
/// `sslrootcert`, `amqps://` with `cacertfile`); the files they name exist only in the pod.
#[test]
fn the_secret_templates_urls_are_ones_the_drivers_accept() {
    let runs: Vec<(String, BTreeMap<String, String>)> = k8s_containers()
        .into_iter()
        .map(|c| (c.at, c.env))
        .collect();
    let refused = urls_the_drivers_refuse(&runs);
    assert!(refused.is_empty(), "{}", refused.join("\n"));
}
