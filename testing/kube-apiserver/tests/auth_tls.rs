//! Authentication, authorization and TLS: tokens (401), forbidden rules (403), a CA-verified
//! server from a kubeconfig written by the helpers, client certificates, in-cluster files.

mod common;

use common::*;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams, Patch, PatchParams};
use podnet_test_apiserver::{
    CaRef, Credentials, ForbiddenRule, Pki, ServerConfig, write_in_cluster_files, write_kubeconfig,
};
use serde_json::json;
use std::net::IpAddr;
use std::path::PathBuf;

const FLANNEL: &str = "system:serviceaccount:kube-flannel:flannel";

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "podnet-test-apiserver-{tag}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn localhost() -> Vec<IpAddr> {
    vec!["127.0.0.1".parse().unwrap()]
}

#[tokio::test]
async fn tokens_are_checked_and_can_be_revoked() {
    let srv = server(ServerConfig::default().with_token("good", FLANNEL));
    add_nodes(&srv, 1);
    let dir = temp_dir("tokens");
    let good = dir.join("good");
    write_kubeconfig(
        &good,
        &srv.url(),
        CaRef::None,
        &Credentials::Token("good".into()),
    )
    .unwrap();
    write_kubeconfig(
        &dir.join("bad"),
        &srv.url(),
        CaRef::None,
        &Credentials::Token("bad".into()),
    )
    .unwrap();
    write_kubeconfig(
        &dir.join("none"),
        &srv.url(),
        CaRef::None,
        &Credentials::None,
    )
    .unwrap();
    let nodes: Api<Node> = Api::all(client_from_kubeconfig(&good).await);
    assert_eq!(
        nodes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    for bad in ["bad", "none"] {
        let api: Api<Node> = Api::all(client_from_kubeconfig(&dir.join(bad)).await);
        let s = api_status(api.get("node1").await.unwrap_err());
        assert_eq!(
            (s.code, s.reason.as_str(), s.message.as_str()),
            (401, "Unauthorized", "Unauthorized"),
            "{bad}"
        );
    }
    let (code, body) = raw(&client(&srv), "GET", "/api/v1/nodes", None, "").await;
    assert_eq!(code, 401);
    assert_eq!(
        body,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": "Unauthorized", "reason": "Unauthorized", "code": 401})
    );
    srv.store().revoke_token("good");
    assert_eq!(api_status(nodes.get("node1").await.unwrap_err()).code, 401);
    srv.store().set_token("good", FLANNEL);
    assert!(nodes.get("node1").await.is_ok());
    let users: Vec<_> = srv
        .store()
        .requests()
        .into_iter()
        .map(|r| (r.status, r.user))
        .collect();
    assert_eq!(users.first(), Some(&(200, Some(FLANNEL.to_string()))));
    assert_eq!(users.last(), Some(&(200, Some(FLANNEL.to_string()))));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn forbidden_rules_give_the_real_403() {
    let srv = server(
        ServerConfig::default()
            .with_token("t", FLANNEL)
            .with_forbidden(ForbiddenRule::new("patch", "nodes/status").for_user(FLANNEL)),
    );
    add_nodes(&srv, 1);
    let dir = temp_dir("forbidden");
    let kc = dir.join("kubeconfig");
    write_kubeconfig(
        &kc,
        &srv.url(),
        CaRef::None,
        &Credentials::Token("t".into()),
    )
    .unwrap();
    let nodes: Api<Node> = Api::all(client_from_kubeconfig(&kc).await);
    let patch = Patch::Strategic(
        json!({"status": {"conditions": [{"type": "NetworkUnavailable", "status": "False"}]}}),
    );
    let s = api_status(
        nodes
            .patch_status("node1", &PatchParams::default(), &patch)
            .await
            .unwrap_err(),
    );
    assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        s.message,
        "nodes \"node1\" is forbidden: User \"system:serviceaccount:kube-flannel:flannel\" cannot patch resource \"nodes/status\" in API group \"\" at the cluster scope"
    );
    let d = s.details.unwrap();
    assert_eq!(
        (d.name.as_str(), d.kind.as_str(), d.group.as_str()),
        ("node1", "nodes", "")
    );
    // Patching the node itself is allowed; a namespaced denial names the namespace.
    nodes
        .patch(
            "node1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    srv.store().forbid(ForbiddenRule::new("list", "pods"));
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(client_from_kubeconfig(&kc).await, "kube-system");
    let s = api_status(pods.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(
        s.message,
        "pods is forbidden: User \"system:serviceaccount:kube-flannel:flannel\" cannot list resource \"pods\" in API group \"\" in the namespace \"kube-system\""
    );
    srv.store().clear_forbidden();
    assert!(pods.list(&ListParams::default()).await.is_ok());
    assert!(
        nodes
            .patch_status("node1", &PatchParams::default(), &patch)
            .await
            .is_ok()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn tls_with_the_test_ca_from_a_kubeconfig() {
    let dir = temp_dir("tls");
    let pki = Pki::generate(&dir, &localhost()).unwrap();
    let srv = server(
        ServerConfig::default()
            .with_tls(pki.server_tls())
            .with_token("t", FLANNEL),
    );
    assert!(srv.url().starts_with("https://127.0.0.1:"));
    add_nodes(&srv, 2);
    let kc = dir.join("kubeconfig");
    write_kubeconfig(
        &kc,
        &srv.url(),
        CaRef::Data(&pki.ca_pem),
        &Credentials::Token("t".into()),
    )
    .unwrap();
    let nodes: Api<Node> = Api::all(client_from_kubeconfig(&kc).await);
    assert_eq!(
        nodes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    // A client that trusts another CA does not get through.
    let other = Pki::generate(&dir.join("other"), &localhost()).unwrap();
    let wrong = dir.join("wrong-ca");
    write_kubeconfig(
        &wrong,
        &srv.url(),
        CaRef::File(&other.ca_cert_path),
        &Credentials::Token("t".into()),
    )
    .unwrap();
    let api: Api<Node> = Api::all(client_from_kubeconfig(&wrong).await);
    assert!(!matches!(
        api.get("node1").await,
        Ok(_) | Err(kube::Error::Api(_))
    ));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn client_certificates_authenticate_cn_as_the_user() {
    let dir = temp_dir("client-cert");
    let pki = Pki::generate(&dir, &localhost()).unwrap();
    let srv = server(
        ServerConfig::default()
            .with_tls(pki.server_tls())
            .with_anonymous(false),
    );
    add_nodes(&srv, 1);
    let cert = pki
        .client_cert("system:node:node1", Some("system:nodes"))
        .unwrap();
    let kc = dir.join("kubeconfig");
    let creds = Credentials::ClientCert {
        cert: cert.cert_path.clone(),
        key: cert.key_path.clone(),
    };
    write_kubeconfig(&kc, &srv.url(), CaRef::File(&pki.ca_cert_path), &creds).unwrap();
    let nodes: Api<Node> = Api::all(client_from_kubeconfig(&kc).await);
    srv.store().clear_requests();
    assert_eq!(
        nodes.get("node1").await.unwrap().metadata.name.as_deref(),
        Some("node1")
    );
    assert_eq!(
        srv.store().requests()[0].user.as_deref(),
        Some("system:node:node1")
    );
    srv.store()
        .forbid(ForbiddenRule::new("get", "nodes").for_user("system:node:node1"));
    let s = api_status(nodes.get("node1").await.unwrap_err());
    assert!(
        s.message
            .contains("User \"system:node:node1\" cannot get resource \"nodes\""),
        "{}",
        s.message
    );
    // Without the certificate (and anonymous off) the same server says 401.
    let anon = dir.join("anon");
    write_kubeconfig(
        &anon,
        &srv.url(),
        CaRef::File(&pki.ca_cert_path),
        &Credentials::None,
    )
    .unwrap();
    let api: Api<Node> = Api::all(client_from_kubeconfig(&anon).await);
    assert_eq!(api_status(api.get("node1").await.unwrap_err()).code, 401);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn in_cluster_files_are_written() {
    let dir = temp_dir("in-cluster");
    let pki = Pki::generate(&dir.join("pki"), &localhost()).unwrap();
    let sa = dir.join("serviceaccount");
    write_in_cluster_files(&sa, "tok", &pki.ca_pem, "kube-flannel").unwrap();
    assert_eq!(std::fs::read_to_string(sa.join("token")).unwrap(), "tok");
    assert_eq!(
        std::fs::read_to_string(sa.join("namespace")).unwrap(),
        "kube-flannel"
    );
    assert_eq!(
        std::fs::read_to_string(sa.join("ca.crt")).unwrap(),
        pki.ca_pem
    );
    let _ = std::fs::remove_dir_all(dir);
}
