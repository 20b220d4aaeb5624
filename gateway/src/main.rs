//! The `mqttsn-gateway` binary.

fn main() {
    eprintln!("mqttsn-gateway: the gateway service is not released yet; see README.md");
    std::process::exit(2);
}
