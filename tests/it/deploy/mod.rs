//! deploy/ checked as data (no Docker engine or cluster here): every file parses, and what
//! the files say about the program (its settings, subcommands, listeners, probes, queues and
//! metrics) is what the program does. `files` reads the files alone; `live` holds them
//! against the real binary, broker and database.

mod files;
mod live;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;

use clap::CommandFactory;
use serde::Deserialize;
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A file of the repository, by its path from the root.
pub fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every file under deploy/, by its path from the repository root, sorted.
pub fn deploy_files() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("a readable directory") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                let rel = path.strip_prefix(ROOT).expect("under the root");
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut files = Vec::new();
    walk(&Path::new(ROOT).join("deploy"), &mut files);
    files.sort();
    files
}

/// The documents of a YAML text as JSON values, with `<<` merge keys applied; empty
/// documents are left out.
pub fn parse_yaml(text: &str) -> Result<Vec<Value>, String> {
    let mut documents = Vec::new();
    for document in yaml_serde::Deserializer::from_str(text) {
        let mut value = yaml_serde::Value::deserialize(document).map_err(|e| e.to_string())?;
        value.apply_merge().map_err(|e| e.to_string())?;
        let json = serde_json::to_value(value).map_err(|e| e.to_string())?;
        if !json.is_null() {
            documents.push(json);
        }
    }
    Ok(documents)
}

pub fn yaml(rel: &str) -> Vec<Value> {
    parse_yaml(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

pub fn json(rel: &str) -> Value {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A string-to-string mapping (ConfigMap data, a Secret's stringData, compose environment).
pub fn string_map(value: &Value) -> BTreeMap<String, String> {
    let Some(map) = value.as_object() else {
        return BTreeMap::new();
    };
    map.iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), v)
        })
        .collect()
}

/// `KYC_…` keys that a YAML file names in comments only (`# KYC_X: "…"`): documented
/// alternatives, which must be settings too.
pub fn commented_keys(rel: &str) -> Vec<String> {
    read(rel)
        .lines()
        .filter_map(|line| {
            let rest = line.trim_start().strip_prefix('#')?.trim_start();
            let (key, _) = rest.split_once(':')?;
            let valid = key.starts_with("KYC_")
                && key
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            valid.then(|| key.to_owned())
        })
        .collect()
}

// --- The program's side ------------------------------------------------------------------

/// Every setting: its environment variable → its long flag, from the program's own clap
/// definition.
pub fn settings() -> BTreeMap<String, String> {
    kyc::cli::Cli::command()
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_str()?.to_owned();
            Some((env, arg.get_long()?.to_owned()))
        })
        .collect()
}

/// The program's default of a setting, from clap.
pub fn default_of(variable: &str) -> Option<String> {
    kyc::cli::Cli::command()
        .get_arguments()
        .find(|arg| arg.get_env().is_some_and(|e| e == variable))?
        .get_default_values()
        .first()
        .map(|v| v.to_string_lossy().into_owned())
}

/// The command line as the program parses it with this environment: each variable becomes
/// its flag, so that every value is checked by the program's own parsers, then `args`.
pub fn parse_as_kyc(
    env: &BTreeMap<String, String>,
    args: &[String],
) -> Result<kyc::cli::Cli, String> {
    let settings = settings();
    let mut argv = vec!["kyc".to_owned()];
    for (variable, value) in env {
        let flag = settings
            .get(variable)
            .ok_or_else(|| format!("{variable} is not a setting"))?;
        argv.push(format!("--{flag}={value}"));
    }
    argv.extend(args.iter().cloned());
    <kyc::cli::Cli as clap::Parser>::try_parse_from(&argv).map_err(|e| e.render().to_string())
}

/// The address a listen setting resolves to in `env`, with the program's default.
pub fn listen_addr(env: &BTreeMap<String, String>, variable: &str) -> Option<SocketAddr> {
    let value = env
        .get(variable)
        .cloned()
        .or_else(|| default_of(variable))?;
    Some(
        value
            .parse()
            .unwrap_or_else(|e| panic!("{variable}={value}: {e}")),
    )
}

// --- Kubernetes --------------------------------------------------------------------------

/// Every object of the kustomize base and of the Secret template, with its file.
pub fn k8s_objects() -> Vec<(String, Value)> {
    deploy_files()
        .into_iter()
        .filter(|f| f.starts_with("deploy/k8s/") && f.ends_with(".yaml"))
        .flat_map(|f| yaml(&f).into_iter().map(move |doc| (f.clone(), doc)))
        .collect()
}

pub fn k8s_object(kind: &str, name: &str) -> Option<Value> {
    k8s_objects()
        .into_iter()
        .map(|(_, doc)| doc)
        .find(|doc| doc["kind"] == kind && doc["metadata"]["name"] == name)
}

pub const SECRET_TEMPLATE: &str = "deploy/k8s/secret.example.yaml";

/// A Secret of the template, by name: its keys and placeholder values.
pub fn template_secret(name: &str) -> BTreeMap<String, String> {
    let secret = yaml(SECRET_TEMPLATE)
        .into_iter()
        .find(|doc| doc["kind"] == "Secret" && doc["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{SECRET_TEMPLATE} has no Secret {name}"));
    string_map(&secret["stringData"])
}

/// The base's ConfigMap, by name.
pub fn config_map(name: &str) -> BTreeMap<String, String> {
    let map =
        k8s_object("ConfigMap", name).unwrap_or_else(|| panic!("the base has no ConfigMap {name}"));
    string_map(&map["data"])
}

/// A container of kyc's image in a Deployment or Job of the base.
pub struct K8sContainer {
    /// `Deployment kyc-serve`, for messages.
    pub at: String,
    pub workload: Value,
    pub container: Value,
    /// What follows the image's `kyc` entrypoint.
    pub args: Vec<String>,
    /// envFrom (the ConfigMap's data, the Secret template's keys), then env.
    pub env: BTreeMap<String, String>,
}

impl K8sContainer {
    pub fn role(&self) -> &str {
        self.args.first().map_or("", String::as_str)
    }

    /// `containerPort`s by their names.
    pub fn ports(&self) -> BTreeMap<String, u16> {
        self.container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let port = p["containerPort"].as_u64().expect("a containerPort");
                let name = p["name"].as_str().unwrap_or_default().to_owned();
                (name, u16::try_from(port).expect("a port number"))
            })
            .collect()
    }

    /// A probe's or Service's port, by name or number, as a containerPort.
    pub fn resolve_port(&self, port: &Value) -> Option<u16> {
        match port {
            Value::String(name) => self.ports().get(name).copied(),
            Value::Number(n) => {
                let n = u16::try_from(n.as_u64()?).ok()?;
                self.ports().values().any(|p| *p == n).then_some(n)
            }
            _ => None,
        }
    }

    pub fn pod_labels(&self) -> &Value {
        &self.workload["spec"]["template"]["metadata"]["labels"]
    }

    pub fn pod_annotations(&self) -> BTreeMap<String, String> {
        string_map(&self.workload["spec"]["template"]["metadata"]["annotations"])
    }
}

/// Every container of kyc's image (`image: kyc`) in the base's Deployments and Jobs.
pub fn k8s_containers() -> Vec<K8sContainer> {
    let mut found = Vec::new();
    for (_, doc) in k8s_objects() {
        if doc["kind"] != "Deployment" && doc["kind"] != "Job" {
            continue;
        }
        let at = format!(
            "{} {}",
            doc["kind"].as_str().unwrap_or_default(),
            doc["metadata"]["name"].as_str().unwrap_or_default()
        );
        let pod = &doc["spec"]["template"]["spec"];
        for container in pod["containers"].as_array().into_iter().flatten() {
            if container["image"] != "kyc" {
                continue;
            }
            if container.get("command").is_some() {
                panic!("{at}: `command` would replace the image's kyc entrypoint");
            }
            let args = container["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| a.as_str().expect("string args").to_owned())
                .collect();
            let mut env = BTreeMap::new();
            for from in container["envFrom"].as_array().into_iter().flatten() {
                if let Some(name) = from["configMapRef"]["name"].as_str() {
                    env.extend(config_map(name));
                } else if let Some(name) = from["secretRef"]["name"].as_str() {
                    env.extend(template_secret(name));
                } else {
                    panic!("{at}: an envFrom of an unknown kind: {from}");
                }
            }
            for var in container["env"].as_array().into_iter().flatten() {
                let name = var["name"].as_str().expect("env name").to_owned();
                let value = var["value"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{at}: {name} has no literal value"));
                env.insert(name, value.to_owned());
            }
            found.push(K8sContainer {
                at: at.clone(),
                workload: doc.clone(),
                container: container.clone(),
                args,
                env,
            });
        }
    }
    found
}

/// Whether `selector` (matchLabels or a Service's selector) selects pods labelled `labels`.
pub fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(selector) = selector.as_object() else {
        return false;
    };
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

// --- Compose -----------------------------------------------------------------------------

pub const COMPOSE: &str = "deploy/compose.yaml";

/// Compose's `${NAME:-default}` interpolation, as `up` without those variables set does it.
pub fn interpolate(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .unwrap_or_else(|| panic!("an unclosed ${{ in {value}"))
            + start;
        let inner = &rest[start + 2..end];
        let default = inner
            .split_once(":-")
            .or_else(|| inner.split_once('-'))
            .map(|(_, d)| d)
            .unwrap_or_else(|| panic!("{COMPOSE}: ${{{inner}}} has no default"));
        out.push_str(default);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// A compose service built from deploy/Dockerfile (kyc's image).
pub struct ComposeService {
    pub name: String,
    pub service: Value,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

impl ComposeService {
    pub fn role(&self) -> &str {
        self.args.first().map_or("", String::as_str)
    }
}

pub fn compose() -> Value {
    let mut documents = yaml(COMPOSE);
    assert_eq!(documents.len(), 1, "{COMPOSE} is one document");
    documents.remove(0)
}

pub fn compose_kyc_services() -> Vec<ComposeService> {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    services
        .iter()
        .filter(|(_, s)| {
            s["build"]["dockerfile"]
                .as_str()
                .is_some_and(|d| d.ends_with("deploy/Dockerfile"))
        })
        .map(|(name, service)| {
            let args = match &service["command"] {
                Value::Array(a) => a
                    .iter()
                    .map(|v| v.as_str().expect("string command").to_owned())
                    .collect(),
                Value::Null => dockerfile().cmd,
                other => panic!("{COMPOSE}: {name}'s command is not a list: {other}"),
            };
            let env = string_map(&service["environment"])
                .into_iter()
                .map(|(k, v)| (k, interpolate(&v)))
                .collect();
            ComposeService {
                name: name.clone(),
                service: service.clone(),
                args,
                env,
            }
        })
        .collect()
}

// --- The Dockerfile ----------------------------------------------------------------------

pub struct Dockerfile {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// The HEALTHCHECK's command.
    pub healthcheck: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub expose: BTreeSet<u16>,
}

/// The runtime stage's instructions (the last FROM on), continuation lines joined.
pub fn dockerfile() -> Dockerfile {
    let text = read("deploy/Dockerfile");
    let mut instructions: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    let runtime = instructions
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .expect("a FROM");
    let exec_form = |s: &str| -> Vec<String> {
        serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("exec form {s}: {e}"))
    };
    let mut file = Dockerfile {
        entrypoint: Vec::new(),
        cmd: Vec::new(),
        healthcheck: Vec::new(),
        env: BTreeMap::new(),
        expose: BTreeSet::new(),
    };
    for instruction in &instructions[runtime..] {
        let (keyword, rest) = instruction.split_once(' ').unwrap_or((instruction, ""));
        match keyword {
            "ENTRYPOINT" => file.entrypoint = exec_form(rest),
            "CMD" => file.cmd = exec_form(rest),
            "HEALTHCHECK" => {
                let (_, command) = rest.split_once(" CMD ").expect("HEALTHCHECK … CMD");
                file.healthcheck = exec_form(command);
            }
            "ENV" => {
                for pair in rest.split_whitespace() {
                    let (k, v) = pair.split_once('=').expect("ENV KEY=value");
                    file.env.insert(k.to_owned(), v.to_owned());
                }
            }
            "EXPOSE" => file.expose.extend(
                rest.split_whitespace()
                    .map(|p| p.parse::<u16>().expect("a port")),
            ),
            _ => {}
        }
    }
    file
}

// --- PromQL and the exposition format ------------------------------------------------------

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// A label matcher of a selector: `metric{label op "value"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    pub metric: String,
    pub label: String,
    pub op: String,
    pub value: String,
}

/// What an expression uses: the kyc_ metric names as written (`_bucket` kept), their label
/// matchers, and the labels it groups by.
#[derive(Debug, Default)]
pub struct Uses {
    pub metrics: BTreeSet<String>,
    pub matchers: Vec<Matcher>,
    pub grouping: BTreeSet<String>,
}

pub fn promql_uses(expr: &str) -> Uses {
    let chars: Vec<char> = expr.chars().collect();
    let mut uses = Uses::default();
    let word_at =
        |i: usize| -> String { chars[i..].iter().take_while(|c| is_ident(**c)).collect() };
    let skip_space = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let mut i = 0;
    while i < chars.len() {
        let starts_word = i == 0 || !is_ident(chars[i - 1]);
        if !starts_word || !is_ident(chars[i]) {
            i += 1;
            continue;
        }
        let word = word_at(i);
        i += word.chars().count();
        if word.starts_with("kyc_") {
            uses.metrics.insert(word.clone());
            let mut j = skip_space(i);
            if chars.get(j) == Some(&'{') {
                j += 1;
                loop {
                    j = skip_space(j);
                    match chars.get(j) {
                        None => panic!("an unclosed selector in {expr}"),
                        Some('}') => break,
                        Some(',') => {
                            j += 1;
                            continue;
                        }
                        _ => {}
                    }
                    let label = word_at(j);
                    j = skip_space(j + label.chars().count());
                    let op: String = chars[j..]
                        .iter()
                        .take_while(|c| matches!(c, '=' | '!' | '~'))
                        .collect();
                    j = skip_space(j + op.chars().count());
                    assert_eq!(chars.get(j), Some(&'"'), "a quoted label value in {expr}");
                    j += 1;
                    let mut value = String::new();
                    while let Some(&c) = chars.get(j) {
                        j += 1;
                        match c {
                            '"' => break,
                            '\\' => {
                                value.push(*chars.get(j).expect("an escaped character"));
                                j += 1;
                            }
                            c => value.push(c),
                        }
                    }
                    uses.matchers.push(Matcher {
                        metric: word.clone(),
                        label,
                        op,
                        value,
                    });
                }
                i = j + 1;
            }
        } else if word == "by" || word == "without" {
            let j = skip_space(i);
            if chars.get(j) == Some(&'(') {
                let close = chars[j..].iter().position(|c| *c == ')').expect("a )") + j;
                let inside: String = chars[j + 1..close].iter().collect();
                uses.grouping.extend(
                    inside
                        .split(',')
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned),
                );
                i = close + 1;
            }
        }
    }
    uses
}

/// A `/metrics` text: each family's TYPE, and every series with its labels.
#[derive(Debug, Default)]
pub struct Exposition {
    pub types: BTreeMap<String, String>,
    pub series: Vec<(String, BTreeMap<String, String>)>,
}

impl Exposition {
    pub fn parse(text: &str) -> Self {
        let mut exposition = Self::default();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
                exposition.types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let name: String = line.chars().take_while(|c| is_ident(*c)).collect();
            let mut labels = BTreeMap::new();
            if let Some(rest) = line[name.len()..].strip_prefix('{') {
                let inside = &rest[..rest.rfind('}').expect("a closing brace")];
                // Label values come from fixed sets: no commas or quotes inside them.
                for pair in inside.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    labels.insert(k.to_owned(), v.trim_matches('"').to_owned());
                }
            }
            exposition.series.push((name, labels));
        }
        exposition
    }

    /// The family a name as written in PromQL belongs to: itself, or a histogram's
    /// `_bucket`, `_sum` or `_count`.
    pub fn family_of(&self, name: &str) -> Option<String> {
        if self.types.contains_key(name) {
            return Some(name.to_owned());
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = name.strip_suffix(suffix)?;
            (self.types.get(base).map(String::as_str) == Some("histogram")).then(|| base.to_owned())
        })
    }

    /// Label sets of the series named `name` (as written: `…_bucket` has `le`).
    pub fn labels_of<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = &'a BTreeMap<String, String>> {
        self.series
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, labels)| labels)
    }

    pub fn merge(&mut self, other: Self) {
        self.types.extend(other.types);
        self.series.extend(other.series);
    }
}

/// A PromQL regular expression (fully anchored) made only of literals, `\.` and `.*`,
/// matched against `value`; `None` for anything richer, which is left unchecked.
pub fn simple_regex_match(pattern: &str, value: &str) -> Option<bool> {
    #[derive(Clone, Copy, PartialEq)]
    enum Token {
        Literal(char),
        AnyRun,
    }
    let mut tokens = Vec::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => tokens.push(Token::Literal(chars.next()?)),
            '.' if chars.peek() == Some(&'*') => {
                chars.next();
                tokens.push(Token::AnyRun);
            }
            '.' | '*' | '+' | '?' | '(' | ')' | '[' | ']' | '{' | '}' | '|' | '^' | '$' => {
                return None;
            }
            c => tokens.push(Token::Literal(c)),
        }
    }
    fn matches(tokens: &[Token], value: &[char]) -> bool {
        match tokens.split_first() {
            None => value.is_empty(),
            Some((Token::AnyRun, rest)) => (0..=value.len()).any(|n| matches(rest, &value[n..])),
            Some((Token::Literal(c), rest)) => {
                value.first() == Some(c) && matches(rest, &value[1..])
            }
        }
    }
    let value: Vec<char> = value.chars().collect();
    Some(matches(&tokens, &value))
}

/// Every `expr` of the alert rules, with the alert's name.
pub fn alert_expressions() -> Vec<(String, String)> {
    let rules = yaml("deploy/prometheus/alerts.yaml");
    rules[0]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").iter())
        .map(|r| {
            (
                format!("alert {}", r["alert"].as_str().unwrap_or("?")),
                r["expr"].as_str().expect("an expr").to_owned(),
            )
        })
        .collect()
}

/// Every `expr` of the dashboard's panels (rows and nested panels included).
pub fn dashboard_expressions() -> Vec<(String, String)> {
    fn walk(value: &Value, panel: &str, out: &mut Vec<(String, String)>) {
        match value {
            Value::Object(map) => {
                let panel = map
                    .get("title")
                    .and_then(Value::as_str)
                    .map_or(panel.to_owned(), |t| format!("panel \"{t}\""));
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr", Value::String(expr)) => out.push((panel.clone(), expr.clone())),
                        _ => walk(v, &panel, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, panel, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(
        &json("deploy/grafana/kyc-dashboard.json"),
        "dashboard",
        &mut out,
    );
    out
}

#[test]
fn promql_uses_reads_names_selectors_and_grouping() {
    let uses = promql_uses(
        r#"histogram_quantile(0.99, sum by (le) (rate(kyc_apply_seconds_bucket[5m]))) > 5
           and max by (queue, x) (kyc_queue_depth{queue=~".*\\.retry\\..*", a!="b"}) > 10
           and on() kyc_broker_connected == 0"#,
    );
    assert_eq!(
        uses.metrics.into_iter().collect::<Vec<_>>(),
        [
            "kyc_apply_seconds_bucket",
            "kyc_broker_connected",
            "kyc_queue_depth"
        ]
    );
    assert_eq!(
        uses.matchers[0],
        Matcher {
            metric: "kyc_queue_depth".into(),
            label: "queue".into(),
            op: "=~".into(),
            value: r".*\.retry\..*".into(),
        }
    );
    assert_eq!(uses.matchers[1].op, "!=");
    assert_eq!(
        uses.grouping.into_iter().collect::<Vec<_>>(),
        ["le", "queue", "x"]
    );
    assert_eq!(
        simple_regex_match(r".*\.retry\..*", "k.retry.5s"),
        Some(true)
    );
    assert_eq!(
        simple_regex_match(r".*\.retry\..*", "k.webhooks"),
        Some(false)
    );
    assert_eq!(simple_regex_match(r"a|b", "a"), None);
}
