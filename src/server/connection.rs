//! Connections: the accept loop, the cap on open connections and the HTTP
//! timeouts that keep slow or idle clients from holding the server.
//!
//! - `--max-connections`: past the cap a new connection gets a short 503
//!   and is closed (never queued behind the others);
//! - `--header-timeout`: a client has this long to send a request's headers,
//!   counted from the connection's opening or the end of the previous
//!   response, so it is also how long an idle keep-alive connection stays;
//! - `--body-timeout`: the longest pause while a request body arrives (a
//!   stalled upload gets 408 and its connection is closed), and while an
//!   answer is written (a client that reads nothing for that long, such as
//!   a live-stream follower that stopped reading, is disconnected);
//! - on shutdown, connections finish their request within a grace period,
//!   then are dropped (live streams would otherwise hold the server).

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::Request;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Bounds on connections and the time a client may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections served at once; more are refused with 503.
    pub max_connections: usize,
    /// Time to send a request's headers (also the idle keep-alive time).
    pub header_timeout: Duration,
    /// Longest pause between two parts of a request body.
    pub body_timeout: Duration,
    /// How long in-flight requests may run after a shutdown signal.
    pub shutdown_grace: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Connection counts, shown on `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections refused because `--max-connections` were open.
    pub refused: AtomicU64,
    /// Connections closed because the headers did not arrive in time.
    pub header_timeouts: AtomicU64,
    /// Requests answered 408 because their body stalled.
    pub body_timeouts: AtomicU64,
    /// Connections closed because the client read nothing of an answer
    /// for the body timeout.
    pub write_timeouts: AtomicU64,
}

/// Refusals being written at once; past this a refused connection is
/// closed without an answer.
const MAX_PENDING_REFUSALS: usize = 64;

/// How long a refusal may take to read the request and write the 503.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutdown` resolves, then lets
/// in-flight requests finish within the grace period.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    counters: Arc<ConnectionCounters>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusals = Arc::new(Semaphore::new(MAX_PENDING_REFUSALS));
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    if !is_connection_error(&error) {
                        // Out of file descriptors or similar: wait for
                        // connections to close rather than spin.
                        tracing::error!(%error, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%remote, max_connections = limits.max_connections,
                "refused a connection: too many open");
            if let Ok(refusal) = Arc::clone(&refusals).try_acquire_owned() {
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(REFUSAL_TIME, refuse(stream, limits.max_connections))
                            .await;
                    drop(refusal);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        counters.open.fetch_add(1, Ordering::Relaxed);
        let body_counters = Arc::clone(&counters);
        let service = router
            .clone()
            .map_request(move |request: Request<Incoming>| {
                request.map(|incoming| {
                    Body::new(StallTimeoutBody::new(
                        Body::new(incoming),
                        limits.body_timeout,
                        Arc::clone(&body_counters),
                    ))
                })
            });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        let io = WriteTimeout::new(stream, limits.body_timeout, Arc::clone(&counters));
        let connection = graceful
            .watch(builder.serve_connection(TokioIo::new(io), TowerToHyperService::new(service)));
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                if error.is_timeout() {
                    counters.header_timeouts.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%remote, "closed a connection whose headers did not arrive in time");
                } else {
                    tracing::debug!(%remote, %error, "connection ended with an error");
                }
            }
            counters.open.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.shutdown_grace) => {
            tracing::warn!(
                open = counters.open.load(Ordering::Relaxed),
                "connections still open after the shutdown grace period are dropped"
            );
        }
    }
    Ok(())
}

/// Errors of one connection (the peer gave up): accept the next one.
fn is_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    )
}

/// Answers a connection past the cap with 503 and closes it. The request
/// is read first (briefly) so the client sees the answer, not a reset.
async fn refuse(mut stream: TcpStream, max_connections: usize) {
    let mut request = [0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut request)).await;
    let body = format!(
        "{{\"error_code\":\"TEMPORARILY_UNAVAILABLE\",\"message\":\"the server has \
         {max_connections} connections open (--max-connections); retry later\"}}"
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(response.as_bytes()).await.is_ok() {
        let _ = stream.shutdown().await;
    }
}

/// A connection whose writes fail once the peer has taken no byte for the
/// timeout (its receive window stayed full), so that a client that stops
/// reading cannot hold its connection and what feeds it forever.
struct WriteTimeout {
    inner: TcpStream,
    timeout: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    counters: Arc<ConnectionCounters>,
}

impl WriteTimeout {
    fn new(inner: TcpStream, timeout: Duration, counters: Arc<ConnectionCounters>) -> Self {
        WriteTimeout {
            inner,
            timeout,
            deadline: None,
            counters,
        }
    }

    /// Turns a pending write into an error once it has been pending for
    /// the timeout; any progress resets the clock.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        outcome: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if outcome.is_ready() {
            self.deadline = None;
            return outcome;
        }
        let timeout = self.timeout;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.counters.write_timeouts.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the client read nothing for {} s (--body-timeout)",
                        timeout.as_secs_f64()
                    ),
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncRead for WriteTimeout {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for WriteTimeout {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let outcome = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, outcome)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let outcome = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, outcome)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let outcome = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, outcome)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The error of a request body that paused longer than `--body-timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body stalled: no data for {} s (--body-timeout)", timeout.as_secs_f64())]
pub struct BodyStalled {
    /// The configured pause limit.
    pub timeout: Duration,
}

/// A request body that fails with [`BodyStalled`] when no part of it
/// arrives within the timeout while it is being read.
struct StallTimeoutBody {
    inner: Body,
    timeout: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    counters: Arc<ConnectionCounters>,
}

impl StallTimeoutBody {
    fn new(inner: Body, timeout: Duration, counters: Arc<ConnectionCounters>) -> Self {
        StallTimeoutBody {
            inner,
            timeout,
            deadline: None,
            counters,
        }
    }
}

impl http_body::Body for StallTimeoutBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.deadline = None;
            return Poll::Ready(frame);
        }
        let timeout = this.timeout;
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.counters.body_timeouts.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(Some(Err(axum::Error::new(BodyStalled { timeout }))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `error` (or one of its sources) is a stalled body.
pub fn is_body_stall(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<BodyStalled>() {
            return true;
        }
        current = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn a_body_that_pauses_too_long_fails_and_is_counted() {
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let inner = Body::from_stream(tokio_stream_from(receiver));
        let counters = Arc::new(ConnectionCounters::default());
        let mut body = StallTimeoutBody::new(inner, Duration::from_secs(5), Arc::clone(&counters));
        sender.send(Ok(Bytes::from_static(b"abc"))).await.unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), Bytes::from_static(b"abc"));
        // A pause shorter than the timeout is fine, and restarts the clock.
        let send_later = tokio::spawn({
            let sender = sender.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(4)).await;
                sender.send(Ok(Bytes::from_static(b"def"))).await.unwrap();
            }
        });
        let second = body.frame().await.unwrap().unwrap();
        assert_eq!(second.into_data().unwrap(), Bytes::from_static(b"def"));
        send_later.await.unwrap();
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(is_body_stall(&error), "{error}");
        assert!(error.to_string().contains("--body-timeout"), "{error}");
        assert_eq!(counters.body_timeouts.load(Ordering::Relaxed), 1);
        drop(sender);
    }

    fn tokio_stream_from(
        mut receiver: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
        futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
    }
}
