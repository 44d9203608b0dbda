//! Helpers shared by the kube-client tests: servers on 127.0.0.1, clients, raw requests.

#![allow(dead_code)]

use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use podnet_test_apiserver::{ApiServer, ServerConfig, fixtures};
use serde_json::Value;
use std::net::{IpAddr, TcpListener};
use std::path::Path;

/// A server on an ephemeral loopback port.
pub fn server(cfg: ServerConfig) -> ApiServer {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    ApiServer::start(listener, cfg).expect("start the test API server")
}

/// A client for a plain-HTTP server without credentials.
pub fn client(server: &ApiServer) -> Client {
    let config = Config::new(server.url().parse().expect("server URL"));
    Client::try_from(config).expect("client")
}

/// A client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Client {
    let kc = Kubeconfig::read_from(path).expect("read kubeconfig");
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("config from kubeconfig");
    Client::try_from(config).expect("client")
}

/// Node `name` stamped from the worker fixture, at 10.0.0.`n` with pod CIDR 10.244.`n`.0/24.
pub fn node_json(name: &str, n: u8) -> Value {
    let t = fixtures::fixture(fixtures::NODE_WORKER).expect("fixture");
    let ip: IpAddr = format!("10.0.0.{n}").parse().unwrap();
    fixtures::node(&t, name, &[ip], &[&format!("10.244.{n}.0/24")])
}

/// Creates node1..=nodeN in the server's store.
pub fn add_nodes(server: &ApiServer, count: u8) {
    for n in 1..=count {
        server
            .store()
            .create(node_json(&format!("node{n}"), n))
            .expect("create node");
    }
}

/// Creates a node through the API (kube-client POST).
pub async fn post_node(client: &Client, name: &str, n: u8) -> Node {
    let node: Node = serde_json::from_value(node_json(name, n)).unwrap();
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await
        .expect("create node")
}

/// Sends a raw request; returns the status code and the body parsed as JSON (or as a string).
pub async fn raw(
    client: &Client,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let mut b = http::Request::builder().method(method).uri(path);
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    let req = b
        .body(kube::client::Body::from(body.as_bytes().to_vec()))
        .unwrap();
    let resp = client.send(req).await.expect("send");
    let code = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (code, v)
}

/// The `Status` inside a kube API error.
pub fn api_status(err: kube::Error) -> Box<kube::core::Status> {
    match err {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}
