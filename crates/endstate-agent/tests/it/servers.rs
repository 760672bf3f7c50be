//! Test servers on `127.0.0.1` port 0: an axum app, a listener that never answers, and a raw
//! HTTP/1.0 responder. Each is checked to really be up before it is returned.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Serves `router` (plus `/ready`) and returns its address once `/ready` answered.
pub(crate) async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router.route("/ready", get(|| async { "ready" }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = client.get(format!("http://{addr}/ready")).send().await.unwrap();
    assert_eq!(response.status(), 200, "test server did not start");
    assert_eq!(response.text().await.unwrap(), "ready");
    addr
}

/// A listener that accepts connections and never answers (nor closes them).
pub(crate) async fn hanging() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    TcpStream::connect(addr).await.expect("hanging listener did not start");
    addr
}

/// Answers every request with `response` (raw bytes), then closes the connection.
pub(crate) async fn raw(response: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0_u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(&response).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    TcpStream::connect(addr).await.expect("raw responder did not start");
    addr
}

/// A port on `127.0.0.1` that nothing listens on (it was just bound and released).
pub(crate) async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}
