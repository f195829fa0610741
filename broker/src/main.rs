fn main() {
    let _ = rmqtt::context::ServerContext::new();
}
