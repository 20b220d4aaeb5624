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

#[test]
fn admission_bounds_default_to_a_gateway_exposed_to_any_network() {
    let l = Config::default().server_options().unwrap().admission;
    assert_eq!(l, mqttsn_gateway::admission::Limits::exposed());
    assert!(l.exempt.iter().any(|n| n.contains("127.0.0.1".parse().unwrap())));
    assert!(!l.exempt.iter().any(|n| n.contains("192.168.1.5".parse().unwrap())));
    let off = Config::parse(
        "[admission]\nexempt = []\nmax_sessions_per_address = 0\nconnect_rate = 0.0\n",
        "f.toml",
    )
    .unwrap();
    let l = off.server_options().unwrap().admission;
    assert!(l.exempt.is_empty() && l.sessions_per_source.is_none() && l.connect.is_none());
    assert!(l.connect_per_source.is_some(), "the other bounds stay");
}

#[test]
fn bad_admission_values_name_the_key() {
    for (text, key) in [
        ("connect_rate = 5.0\nconnect_burst = 0\n", "admission.connect_burst"),
        ("reply_rate_per_address = -1.0\n", "admission.reply_rate_per_address"),
        ("exempt = [\"10.0.0.0/33\"]\n", "admission.exempt[0]"),
        ("exempt = [\"127.0.0.0/8\", \"nowhere\"]\n", "admission.exempt[1]"),
    ] {
        let e = Config::parse(&format!("[admission]\n{text}"), "f.toml").unwrap_err().to_string();
        assert!(e.contains(key), "{text}: {e}");
    }
}

#[test]
fn no_acl_allows_everything_and_an_acl_section_refuses_what_it_does_not_grant() {
    assert!(Config::default().session_config().unwrap().acl.is_none());
    let c = Config::parse(
        "[acl]\npublish = [\"sensors/%c/#\"]\nsubscribe = [\"cmd/%c/#\", \"broadcast/#\"]\n\
         [[acl.rules]]\nclient_id = \"s1\"\npublish = [\"alarm\"]\n\
         [[acl.rules]]\nusername = \"ops\"\nsubscribe = [\"sensors/#\"]\n",
        "f.toml",
    )
    .unwrap();
    let acl = c.session_config().unwrap().acl.unwrap();
    let s1 = acl.for_sensor(&std::sync::Arc::from("s1"), None);
    assert!(s1.may_publish("sensors/s1/temp") && s1.may_publish("alarm"));
    assert!(!s1.may_publish("sensors/s2/temp"));
    assert!(s1.may_subscribe("broadcast/#") && !s1.may_subscribe("sensors/#"));
    let ops = acl.for_sensor(&std::sync::Arc::from("s9"), Some("ops"));
    assert!(ops.may_subscribe("sensors/#") && !ops.may_publish("alarm"));
    let empty = Config::parse("[acl]\n", "f.toml").unwrap().session_config().unwrap();
    let nothing = empty.acl.unwrap().for_sensor(&std::sync::Arc::from("s1"), None);
    assert!(!nothing.may_publish("a") && !nothing.may_subscribe("a"));
}

#[test]
fn bad_acl_patterns_name_the_key_and_the_reason() {
    let err = |text: &str| Config::parse(text, "f.toml").unwrap_err().to_string();
    let e = err("[acl]\npublish = [\"a/#/b\"]\n");
    assert!(e.contains("acl.publish[0]") && e.contains("`#` must be the last level"), "{e}");
    let e = err("[acl]\nsubscribe = [\"ok\", \"a/b+\"]\n");
    assert!(e.contains("acl.subscribe[1]") && e.contains("whole level"), "{e}");
    let e = err("[acl]\npublish = [\"\"]\n");
    assert!(e.contains("acl.publish[0]") && e.contains("empty"), "{e}");
    let rules = "[[acl.rules]]\nclient_id = \"a\"\n[[acl.rules]]\nclient_id = \"b\"\n";
    let e = err(&format!("{rules}[[acl.rules]]\nclient_id = \"c\"\npublish = [\"x/y%c\"]\n"));
    assert!(e.contains("acl.rules[2].publish[0]") && e.contains("`%c` and `%u`"), "{e}");
    let e = err("[[acl.rules]]\npublish = [\"x\"]\n");
    assert!(e.contains("acl.rules[0]") && e.contains("client_id or username"), "{e}");
    let e = err("[[acl.rules]]\nclient_id = \"a\"\nusername = \"u\"\n");
    assert!(e.contains("acl.rules[0]"), "{e}");
    let e = err("[acl]\npublsh = [\"x\"]\n");
    assert!(e.contains("publsh"), "{e}");
}

#[test]
fn the_acl_example_of_the_configuration_page_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let page = std::fs::read_to_string(path).unwrap();
    let example = page
        .split("## Topic ACLs: `[acl]`")
        .nth(1)
        .and_then(|s| s.split("```toml\n").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("a toml block in the ACL section");
    let acl = Config::parse(example, "configuration.md").unwrap().session_config().unwrap().acl;
    let s = acl.unwrap().for_sensor(&std::sync::Arc::from("greenhouse-1"), None);
    assert!(s.may_publish("sensors/greenhouse-1/t") && s.may_publish("greenhouse/1/valve"));
    assert!(s.may_subscribe("cmd/greenhouse-1/#") && !s.may_subscribe("sensors/#"));
}
