//! Broken and hostile clients: the server answers with Status bodies or drops the connection,
//! and keeps serving everyone else.

mod common;

use common::*;
use podnet_test_apiserver::ServerConfig;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Writes `bytes` and reads until the server closes. Requests that are complete say
/// `Connection: close` and keep the write side open (hyper drops half-closed connections);
/// broken ones half-close so the server sees the end of input.
fn send_raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let _ = s.write_all(bytes);
    if !bytes.windows(17).any(|w| w == b"Connection: close") {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn junk_and_odd_requests_do_not_hurt_the_server() {
    let srv = server(ServerConfig::default());
    add_nodes(&srv, 1);
    let addr = srv.addr();
    let answers = tokio::task::spawn_blocking(move || {
        [
            send_raw(addr, b"\x16\x03\x01\x00\xa5garbage\r\n\r\n"),
            send_raw(addr, b"GET /api/v1/nodes HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\n\r\nshort"),
            send_raw(addr, b"GET /api/v1/nodes?labelSelector=%ZZ%&limit=-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            send_raw(addr, b"GET /api/v1/nodes?labelSelector=a%20in%20(b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            send_raw(addr, b"PUT /api/v1/nodes/node1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnull"),
            send_raw(addr, b"GET /api/v1/namespaces//pods/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        ]
    })
    .await
    .unwrap();
    assert!(answers[2].starts_with("HTTP/1.1 400"), "{}", answers[2]);
    assert!(answers[3].starts_with("HTTP/1.1 400"), "{}", answers[3]);
    assert!(
        answers[4].starts_with("HTTP/1.1 400") && answers[4].contains("\"reason\":\"BadRequest\""),
        "{}",
        answers[4]
    );
    let c = client(&srv);
    let (code, body) = raw(&c, "GET", "/api/v1/nodes/node1", None, "").await;
    assert_eq!(
        (code, body["metadata"]["name"].as_str()),
        (200, Some("node1"))
    );
    // Over the 3 MiB body limit: 413 (or the connection drops while the client still writes).
    let big = vec![b'x'; 4 * 1024 * 1024];
    let req = http::Request::post("/api/v1/nodes").header("content-type", "application/json");
    match c
        .send(req.body(kube::client::Body::from(big)).unwrap())
        .await
    {
        Ok(resp) => assert_eq!(resp.status().as_u16(), 413),
        Err(e) => assert!(
            e.to_string().contains("pipe") || e.to_string().contains("reset"),
            "{e}"
        ),
    }
    let (code, _) = raw(&c, "GET", "/api/v1/nodes/node1", None, "").await;
    assert_eq!(code, 200);
}
