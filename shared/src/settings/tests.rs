//! The settings loaded from the embedded defaults and variables, as a process would.

use super::*;

/// A developer's machine (`local`, loopback binds): the development secrets are fine.
fn sources(vars: &[(&str, &str)]) -> Sources {
    Sources {
        env: "local".into(),
        config_dir: PathBuf::from("/nonexistent"),
        vars: vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn load_err(vars: &[(&str, &str)]) -> String {
    match Settings::load_from(sources(vars)) {
        Ok(_) => panic!("settings {vars:?} should have been refused"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn embedded_defaults_are_valid() {
    let s = Settings::load_from(sources(&[])).expect("defaults load");
    assert_eq!(s.amqp.prefix, "cf");
    assert_eq!(s.llm.context_window("llama3.1:8b"), 8192);
    assert_eq!(s.env, Environment::Local);
    assert!(s.is_local_loopback());
}

#[test]
fn environment_variables_override_defaults() {
    let s = Settings::load_from(sources(&[
        ("CHATFLEET__AMQP__PREFIX", "t123"),
        ("CHATFLEET__AMQP__RETRY_DELAYS_S", "2,4"),
        (
            "CHATFLEET__LLM__PROVIDERS__OLLAMA__BASE_URL",
            "http://127.0.0.1:9",
        ),
    ]))
    .expect("load");
    assert_eq!(s.amqp.prefix, "t123");
    assert_eq!(
        s.amqp.retry_delays,
        [Duration::from_secs(2), Duration::from_secs(4)]
    );
    assert_eq!(s.llm.providers["ollama"].base_url, "http://127.0.0.1:9");
}

#[test]
fn an_invalid_value_names_its_key() {
    assert!(load_err(&[("CHATFLEET__AMQP__PREFETCH", "0")]).contains("amqp.prefetch"));
    assert!(load_err(&[("CHATFLEET__AMQP__PREFIX", "Bad Prefix")]).contains("amqp.prefix"));
    assert!(
        load_err(&[("CHATFLEET__LLM__DEFAULT_PROVIDER", "nope")]).contains("llm.default_provider")
    );
    assert!(
        load_err(&[("CHATFLEET__SECURITY__ENCRYPTION_KEY", "short")])
            .contains("security.encryption_key")
    );
}

#[test]
fn a_value_of_the_wrong_type_names_its_key() {
    let err = load_err(&[("CHATFLEET__HTTP__BIND", "not-an-address")]);
    assert!(err.contains("http.bind"), "{err}");
}

/// The `CHATFLEET__…` (and `CHATFLEET_ENV`) values a deployment file sets, with
/// `${VAR:-default}` read as its default (what an unset variable gives).
fn deployment_vars(file: &str) -> (String, Vec<(String, String)>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
    let text = std::fs::read_to_string(&path).expect("deployment file");
    let mut env = "local".to_owned();
    let mut vars = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once(": ") else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        let value = match value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) {
            Some(reference) => reference.split_once(":-").map_or("", |(_, d)| d),
            None => value,
        };
        if key == "CHATFLEET_ENV" {
            env = value.to_owned();
        } else if key.starts_with("CHATFLEET__") {
            vars.push((key.to_owned(), value.to_owned()));
        }
    }
    (env, vars)
}

#[test]
fn shipped_deployment_files_are_refused_until_their_placeholders_are_replaced() {
    for (file, must_name) in [
        (
            "deploy/k8s/config.yaml",
            &[
                "admin.token",
                "security.encryption_key",
                "security.session_keys",
                "whatsapp.app_secret",
                "whatsapp.verify_token",
                "vector.token",
                "database.url",
                "amqp.url",
                "redis.url",
            ][..],
        ),
        (
            "docker-compose.yml",
            &["security.encryption_key", "security.session_keys"][..],
        ),
    ] {
        let (env, vars) = deployment_vars(file);
        let mut s = Sources {
            env,
            config_dir: PathBuf::from("/nonexistent"),
            vars: vars.into_iter().collect(),
        };
        let err = match Settings::load_from(s.clone()) {
            Ok(_) => panic!("{file} starts as shipped"),
            Err(e) => e.to_string(),
        };
        for key in must_name {
            assert!(
                err.contains(&format!("{key}:")),
                "{file}: {key} not named in {err}"
            );
        }
        // With real secrets in place of the placeholders it starts.
        let key = "c2VjcmV0LWtleS1vZi0zMi1ieXRlcy1yZWFsbHktISE=";
        for (name, value) in [
            ("CHATFLEET__ADMIN__TOKEN", "a-real-operator-token-0f9e8d"),
            ("CHATFLEET__SECURITY__ENCRYPTION_KEY", key),
            ("CHATFLEET__SECURITY__SESSION_KEYS", key),
            (
                "CHATFLEET__WHATSAPP__APP_SECRET",
                "0123456789abcdef0123456789abcdef",
            ),
            (
                "CHATFLEET__WHATSAPP__VERIFY_TOKEN",
                "verify-token-of-our-own",
            ),
            ("CHATFLEET__VECTOR__TOKEN", "a-chroma-token-of-our-own"),
            (
                "CHATFLEET__DATABASE__URL",
                "mysql://chatfleet:pw-of-ours@db:3306/chatfleet",
            ),
            (
                "CHATFLEET__AMQP__URL",
                "amqp://chatfleet:pw-of-ours@mq:5672/%2f",
            ),
            (
                "CHATFLEET__REDIS__URL",
                "redis://chatfleet:pw-of-ours@redis:6379",
            ),
        ] {
            s.vars.insert(name.into(), value.into());
        }
        if let Err(e) = Settings::load_from(s) {
            panic!("{file} with its secrets replaced: {e}");
        }
    }
}

#[test]
fn weak_secrets_are_refused_outside_a_loopback_developer_machine() {
    // Loopback binds, but not env "local": every development default is named.
    let mut s = sources(&[]);
    s.env = "staging".into();
    let err = Settings::load_from(s).expect_err("dev secrets").to_string();
    for key in [
        "admin.token:",
        "security.encryption_key:",
        "security.session_keys:",
    ] {
        assert!(err.contains(key), "{key} not named: {err}");
    }
    // env "local" listening on every interface: refused as well.
    for bind in [
        ("CHATFLEET__HTTP__BIND", "0.0.0.0:8080"),
        ("CHATFLEET__ADMIN__BIND", "0.0.0.0:8081"),
        ("CHATFLEET__WORKER__METRICS_BIND", "0.0.0.0:9464"),
    ] {
        let err = load_err(&[bind]);
        assert!(
            err.contains("admin.token:") && err.contains("development default"),
            "{err}"
        );
    }
    let strong = "c2VjcmV0LWtleS1vZi0zMi1ieXRlcy1yZWFsbHktISE=";
    let strict = |vars: &[(&str, &str)]| {
        let mut all = vec![
            ("CHATFLEET__HTTP__BIND", "0.0.0.0:8080"),
            ("CHATFLEET__ADMIN__TOKEN", "an-operator-token-of-ours"),
            ("CHATFLEET__SECURITY__ENCRYPTION_KEY", strong),
            ("CHATFLEET__SECURITY__SESSION_KEYS", strong),
        ];
        all.extend_from_slice(vars);
        Settings::load_from(sources(&all))
    };
    strict(&[]).expect("strong secrets start");
    for (var, value, key) in [
        (
            "CHATFLEET__ADMIN__TOKEN",
            "CHANGE-ME-at-least-16-characters",
            "admin.token",
        ),
        ("CHATFLEET__ADMIN__TOKEN", "short", "admin.token"),
        (
            "CHATFLEET__SECURITY__ENCRYPTION_KEY",
            "CHANGE-ME",
            "security.encryption_key",
        ),
        (
            "CHATFLEET__SECURITY__ENCRYPTION_KEYS",
            &format!("{strong},{DEV_ENCRYPTION_KEY}"),
            "security.encryption_keys",
        ),
        (
            "CHATFLEET__SECURITY__SESSION_KEYS",
            &format!("{strong},{DEV_SESSION_KEY}"),
            "security.session_keys",
        ),
        (
            "CHATFLEET__SECURITY__SESSION_KEYS",
            "",
            "security.session_keys",
        ),
        (
            "CHATFLEET__WHATSAPP__APP_SECRET",
            "CHANGE-ME",
            "whatsapp.app_secret",
        ),
        (
            "CHATFLEET__WHATSAPP__VERIFY_TOKEN",
            "change-me-please-now",
            "whatsapp.verify_token",
        ),
        (
            "CHATFLEET__WHATSAPP__VERIFY_TOKEN",
            "tiny",
            "whatsapp.verify_token",
        ),
    ] {
        match strict(&[(var, value)]) {
            Ok(_) => panic!("{var}={value} accepted"),
            Err(e) => assert!(
                e.to_string().contains(&format!("{key}:")),
                "{var}={value}: {e}"
            ),
        }
    }
    // An empty admin token means no bootstrap token (operators' tokens only).
    let s = strict(&[("CHATFLEET__ADMIN__TOKEN", "")]).expect("no bootstrap token");
    assert!(s.admin.token.expose().is_empty());
}

#[test]
fn production_refuses_development_secrets() {
    let mut s = sources(&[]);
    s.env = "production".into();
    let err = Settings::load_from(s)
        .expect_err("dev secrets refused")
        .to_string();
    assert!(
        err.contains("security.encryption_key") && err.contains("admin.token"),
        "{err}"
    );
}

#[test]
fn secrets_are_redacted_in_debug_output() {
    let s = Settings::load_from(sources(&[])).expect("load");
    let shown = format!("{s:?}");
    assert!(!shown.contains(DEV_ADMIN_TOKEN));
    assert!(!shown.contains("guest:guest"));
}

#[test]
fn durations_are_read_as_durations_and_zero_is_refused() {
    let s =
        Settings::load_from(sources(&[("CHATFLEET__WORKER__DRAIN_TIMEOUT_S", "7")])).expect("load");
    assert_eq!(s.worker.drain_timeout, Duration::from_secs(7));
    let err = load_err(&[("CHATFLEET__WORKER__LOCK_WAIT_S", "0")]);
    assert!(
        err.contains("worker.lock_wait_s") && err.contains("positive"),
        "{err}"
    );
    let err = load_err(&[("CHATFLEET__AMQP__RETRY_DELAYS_S", "1,0")]);
    assert!(err.contains("amqp.retry_delays_s"), "{err}");
}

#[test]
fn an_unknown_environment_is_refused() {
    let mut s = sources(&[]);
    s.env = "prod".into();
    let err = Settings::load_from(s)
        .expect_err("not an environment")
        .to_string();
    assert!(err.contains("env") && err.contains("prod"), "{err}");
}

#[test]
fn a_provider_without_max_concurrency_gets_its_kinds_default() {
    let s = Settings::load_from(sources(&[
        ("CHATFLEET__LLM__PROVIDERS__HOSTED__KIND", "openai"),
        (
            "CHATFLEET__LLM__PROVIDERS__HOSTED__BASE_URL",
            "https://llm.example",
        ),
        ("CHATFLEET__LLM__PROVIDERS__HOSTED__TIMEOUT_S", "60"),
    ]))
    .expect("a hosted provider");
    assert_eq!(s.llm.providers["hosted"].max_concurrency, 256);
    assert_eq!(s.llm.providers["ollama"].max_concurrency, 16);
}

#[test]
fn fairness_and_edge_settings_are_checked() {
    assert!(
        load_err(&[("CHATFLEET__LLM__TENANT_MAX_SHARE", "1.5")]).contains("llm.tenant_max_share")
    );
    assert!(
        load_err(&[("CHATFLEET__WORKER__TENANT_MAX_HELD", "5000")])
            .contains("worker.tenant_max_held")
    );
    assert!(load_err(&[("CHATFLEET__PLANS__GROWTH__WEIGHT", "0")]).contains("plans.growth.weight"));
    assert!(
        load_err(&[("CHATFLEET__HTTP__TRUSTED_PROXIES", "10.0.0.0/8,proxy.local")])
            .contains("proxy.local")
    );
    assert!(
        load_err(&[("CHATFLEET__EDGE__SENDS_PER_SESSION_PER_MINUTE", "0")])
            .contains("edge.sends_per_session_per_minute")
    );
}

/// Prices come from the deployment's config file (model names hold dots and colons),
/// in one currency, for configured providers; a plan may cap tokens per day.
#[test]
fn prices_are_read_and_checked() {
    let load = |toml: &str, vars: &[(&str, &str)]| {
        let dir = std::env::temp_dir().join(format!("cf-prices-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("local.toml"), toml).expect("file");
        let mut sources = sources(vars);
        sources.config_dir = dir.clone();
        let loaded = Settings::load_from(sources);
        let _ = std::fs::remove_dir_all(dir);
        loaded
    };
    let s = load(
        r#"
[llm.prices."ollama/llama3.1:8b"]
prompt_per_million = 2
completion_per_million = 8
currency = "EUR"
"#,
        &[("CHATFLEET__PLANS__STARTER__TOKENS_PER_DAY", "5000")],
    )
    .expect("prices load");
    let price = s.llm.price("ollama", "llama3.1:8b").expect("a price");
    // 1,000 prompt tokens at 2 per million and 500 completion tokens at 8 per million:
    // 0.002 + 0.004 = 0.006 units = 6,000 micro-units.
    assert_eq!(price.cost_micros(1000, 500), 6000);
    assert_eq!(s.llm.currency(&s.speech), Some("EUR"));
    assert!(s.llm.price("ollama", "other").is_none());
    assert_eq!(s.plans.starter.tokens_per_day, Some(5000));
    assert_eq!(s.plans.growth.tokens_per_day, None);
    // Transcription by the minute: 90 seconds at 0.006 a minute is 0.009 = 9,000 micro-units.
    let minute = MinutePrice {
        per_minute: 0.006,
        currency: "EUR".into(),
    };
    assert_eq!(minute.cost_micros(90.0), 9000);

    let e = load(
        r#"
[llm.prices."nope/m"]
prompt_per_million = 1
completion_per_million = -1
currency = "USD"
[speech.prices."ollama/whisper"]
per_minute = 0.006
currency = "EUR"
"#,
        &[],
    )
    .expect_err("refused")
    .to_string();
    assert!(e.contains("\"nope\" is not one of llm.providers"), "{e}");
    assert!(e.contains("prices must be zero or more"), "{e}");
    assert!(e.contains("every price must be in one currency"), "{e}");
    let e = load_err(&[(
        "CHATFLEET__LLM__TENANT_BASE_URL_ALLOWLIST",
        "https://api.x.com",
    )]);
    assert!(e.contains("llm.tenant_base_url_allowlist"), "{e}");
}

#[test]
fn a_broker_cluster_is_a_list_of_nodes_tried_in_order() {
    let one = Settings::load_from(sources(&[])).expect("defaults");
    assert_eq!(
        one.amqp.nodes(),
        vec![one.amqp.url.clone()],
        "one node: amqp.url"
    );
    let cluster = Settings::load_from(sources(&[(
        "CHATFLEET__AMQP__URLS",
        "amqp://u:p@mq-1:5672/%2f,amqps://u:p@mq-2:5671/%2f,amqp://u:p@mq-3:5672/%2f",
    )]))
    .expect("three nodes");
    let nodes: Vec<String> = cluster
        .amqp
        .nodes()
        .iter()
        .map(|n| n.expose().clone())
        .collect();
    assert_eq!(
        nodes,
        [
            "amqp://u:p@mq-1:5672/%2f",
            "amqps://u:p@mq-2:5671/%2f",
            "amqp://u:p@mq-3:5672/%2f"
        ]
    );
    let err = load_err(&[(
        "CHATFLEET__AMQP__URLS",
        "amqp://mq-1:5672,http://mq-2:15672",
    )]);
    assert!(
        err.contains("amqp.urls: node 2 must be an amqp://"),
        "{err}"
    );
}
