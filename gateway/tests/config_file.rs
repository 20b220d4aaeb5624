//! `config/gateway.toml` documents every option with its default: it must
//! parse, and give exactly the defaults but the store path of the service.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use mqttsn_gateway::config::Config;

#[test]
fn example_config_is_valid_and_shows_the_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/gateway.toml");
    let mut file = Config::load(&path).unwrap();
    let defaults = Config::default();
    // The one value that is not the default: the service's store lives in
    // its state directory (StateDirectory=mqttsn in the unit).
    assert_eq!(file.gateway.store, "/var/lib/mqttsn/sessions.redb");
    file.gateway.store = defaults.gateway.store.clone();
    assert_eq!(format!("{file:?}"), format!("{defaults:?}"));
}

#[test]
fn unknown_keys_and_bad_values_name_the_key() {
    let e = Config::parse("[limits]\nmax_topic = 3\n", "f.toml").unwrap_err().to_string();
    assert!(e.contains("max_topic"), "{e}");
    let e = Config::parse("[limits]\nmax_datagram = 8\n", "f.toml").unwrap_err().to_string();
    assert!(e.contains("limits.max_datagram") && e.contains('8'), "{e}");
    let e = Config::parse("[gateway]\nlisten = \"nowhere\"\n", "f.toml").unwrap_err().to_string();
    assert!(e.contains("gateway.listen") && e.contains("nowhere"), "{e}");
}

#[test]
fn a_weak_api_token_is_refused_without_showing_it() {
    let e = Config::parse("[monitoring]\napi_token = \"short\"\n", "f.toml").unwrap_err();
    let e = e.to_string();
    assert!(e.contains("monitoring.api_token") && !e.contains("short\""), "{e}");
    let spaced = "[monitoring]\napi_token = \"sixteen chars here\"\n";
    let e = Config::parse(spaced, "f.toml").unwrap_err().to_string();
    assert!(e.contains("monitoring.api_token") && !e.contains("chars here"), "{e}");
    let ok = Config::parse("[monitoring]\napi_token = \"0123456789abcdef\"\n", "f.toml").unwrap();
    assert_eq!(ok.api_token().unwrap().as_deref(), Some("0123456789abcdef"));
    assert_eq!(Config::default().api_token().unwrap(), None);
    assert!(!format!("{ok:?}").contains("0123456789abcdef"), "the token shows in Debug");
}
