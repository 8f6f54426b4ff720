//! The settings loaded from the embedded defaults and variables, as a process would.

use super::*;

fn sources(vars: &[(&str, &str)]) -> Sources {
    Sources {
        env: "test".into(),
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
    assert_eq!(s.env, Environment::Test);
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
