//! The HTTP server. For now it serves `/healthz`; the service issue builds the API on it.

use actix_web::{App, HttpResponse, HttpServer, web};
use store::Store;

async fn healthz(store: web::Data<Store>) -> HttpResponse {
    match store.head().await {
        Ok(head) => HttpResponse::Ok().json(serde_json::json!({
            "status": "ok",
            "store": store.backend_name(),
            "head_position": head,
        })),
        Err(e) => HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "status": "unavailable",
            "detail": e.to_string(),
        })),
    }
}

/// Serve until SIGINT/SIGTERM, then drain requests and close the store (which commits what
/// its writer has queued).
pub async fn serve(store: Store, listen: &str) -> anyhow::Result<()> {
    let data = web::Data::new(store.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/healthz", web::get().to(healthz))
    })
    .bind(listen)
    .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?
    .shutdown_timeout(10);
    for addr in server.addrs() {
        tracing::info!(%addr, backend = store.backend_name(), "tenantry listening");
        eprintln!(
            "tenantry listening on http://{addr} ({} store)",
            store.backend_name()
        );
    }
    server.run().await?;
    store.close().await;
    Ok(())
}
