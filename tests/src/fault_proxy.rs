//! A TCP proxy that breaks a share of the connections through it, the way a flaky network or an
//! overloaded S3 front end does: resets, stalls and bodies cut short. The chaos story puts it
//! between the runner pods and MinIO.
//!
//! Every request on a connection draws its fate from one seeded generator, so a run's sequence of
//! faults follows from the seed it printed. (HTTP clients keep connections alive: a draw per
//! connection would spare all but a handful of requests.) A new request is recognised as the
//! client speaking again after the server has answered. A broken exchange is broken at a random
//! byte count of the traffic in either direction, so a fault lands in request headers, request
//! bodies (uploads) and response bodies (downloads) alike.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the proxy does to a share of its connections.
#[derive(Debug, Clone, Copy)]
pub struct FaultPlan {
    /// The share of connections that get a fault, from 0 to 1.
    pub rate: f64,
    pub seed: u64,
}

/// What happened to one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Passed through untouched.
    None,
    /// Closed with a TCP reset once this many bytes have passed.
    Reset { after_bytes: u64 },
    /// Each direction's first bytes held back this long.
    Latency { millis: u64 },
    /// Closed cleanly (FIN both ways) once this many bytes have passed: a response body cut short
    /// looks complete to a reader that does not check its length.
    CutOff { after_bytes: u64 },
}

/// Counts of what the proxy did, for the story's figures: faults that took effect (a reset
/// drawn for a request whose exchange ended before its byte count is not counted).
#[derive(Debug, Default)]
pub struct FaultStats {
    pub connections: AtomicU64,
    pub exchanges: AtomicU64,
    pub resets: AtomicU64,
    pub latencies: AtomicU64,
    pub cut_offs: AtomicU64,
}

impl FaultStats {
    pub fn summary(&self) -> String {
        format!(
            "{} connections, {} requests: {} reset, {} delayed, {} cut off",
            self.connections.load(Ordering::Relaxed),
            self.exchanges.load(Ordering::Relaxed),
            self.resets.load(Ordering::Relaxed),
            self.latencies.load(Ordering::Relaxed),
            self.cut_offs.load(Ordering::Relaxed),
        )
    }

    pub fn faults(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
            + self.latencies.load(Ordering::Relaxed)
            + self.cut_offs.load(Ordering::Relaxed)
    }
}

/// A running proxy; dropping it stops accepting (connections already open finish on their own).
pub struct FaultProxy {
    pub addr: SocketAddr,
    pub stats: Arc<FaultStats>,
    accept: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl FaultProxy {
    /// Listens on `listen` (port 0 picks one) and forwards every connection to `upstream`.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr, plan: FaultPlan) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(FaultStats::default());
        let rng = Arc::new(Mutex::new(ChaCha8Rng::seed_from_u64(plan.seed)));
        let counts = stats.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                counts.connections.fetch_add(1, Ordering::Relaxed);
                let (rng, counts) = (rng.clone(), counts.clone());
                let draw = move || draw(&mut *rng.lock().expect("the generator"), plan.rate);
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, draw, &counts).await;
                    }
                });
            }
        });
        Ok(FaultProxy { addr, stats, accept })
    }
}

/// One connection's fate. Faults are spread evenly over the three kinds; byte counts reach past
/// a typical header block into the bodies, delays past the SDK's retry backoff but well under
/// its read timeout.
pub fn draw(rng: &mut impl Rng, rate: f64) -> Fault {
    if !rng.random_bool(rate.clamp(0.0, 1.0)) {
        return Fault::None;
    }
    match rng.random_range(0..3) {
        0 => Fault::Reset { after_bytes: rng.random_range(0..256 * 1024) },
        1 => Fault::Latency { millis: rng.random_range(200..3000) },
        _ => Fault::CutOff { after_bytes: rng.random_range(0..256 * 1024) },
    }
}

/// Copies both ways until both sides have closed, applying each request's fault. The byte
/// budget is shared by both directions, so a large upload is as likely to be cut as a large
/// download. One half closing is passed on as a half-close, as a faithful proxy must.
async fn relay(
    mut client: TcpStream,
    mut server: TcpStream,
    mut draw: impl FnMut() -> Fault,
    stats: &FaultStats,
) {
    let (mut up_buf, mut down_buf) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let (mut up_open, mut down_open) = (true, true);
    // The current exchange's fault, the bytes it has passed, and who spoke last.
    let mut fault = Fault::None;
    let mut passed = 0u64;
    let mut answered = true;
    let mut broke = false;
    while up_open || down_open {
        // 0: client to server, 1: server to client.
        let (dir, read) = tokio::select! {
            r = client.read(&mut up_buf), if up_open => (0, r),
            r = server.read(&mut down_buf), if down_open => (1, r),
        };
        let n = match read {
            Ok(0) | Err(_) => {
                let to = if dir == 0 { &mut server } else { &mut client };
                let _ = to.shutdown().await;
                if dir == 0 {
                    up_open = false
                } else {
                    down_open = false
                }
                continue;
            }
            Ok(n) => n,
        };
        if dir == 0 && answered {
            // A new request: a new draw.
            answered = false;
            stats.exchanges.fetch_add(1, Ordering::Relaxed);
            fault = draw();
            passed = 0;
            if let Fault::Latency { millis } = fault {
                stats.latencies.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(millis)).await;
            }
        }
        answered |= dir == 1;
        let budget = match fault {
            Fault::Reset { after_bytes } | Fault::CutOff { after_bytes } => after_bytes,
            Fault::None | Fault::Latency { .. } => u64::MAX,
        };
        let allowed = usize::try_from(budget.saturating_sub(passed)).unwrap_or(usize::MAX).min(n);
        passed += n as u64;
        let (to, buf) = if dir == 0 { (&mut server, &up_buf) } else { (&mut client, &down_buf) };
        if allowed > 0 && to.write_all(&buf[..allowed]).await.is_err() {
            break;
        }
        if allowed < n {
            broke = true;
            break;
        }
    }
    match fault {
        Fault::Reset { .. } if broke => {
            stats.resets.fetch_add(1, Ordering::Relaxed);
            // SO_LINGER 0: the close below sends RST, not FIN.
            let _ = client.set_zero_linger();
            let _ = server.set_zero_linger();
        }
        _ => {
            if broke {
                stats.cut_offs.fetch_add(1, Ordering::Relaxed);
            }
            let _ = client.shutdown().await;
            let _ = server.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn proxy(up: SocketAddr, rate: f64, seed: u64) -> FaultProxy {
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        FaultProxy::start(listen, up, FaultPlan { rate, seed }).await.expect("the proxy listens")
    }

    /// Answers each connection with what it sent.
    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                // Whole request, then whole answer, as HTTP goes.
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    if s.read_to_end(&mut got).await.is_ok() {
                        let _ = s.write_all(&got).await;
                    }
                });
            }
        });
        addr
    }

    async fn roundtrip(addr: SocketAddr, len: usize) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(addr).await?;
        let data = vec![7u8; len];
        let (mut r, mut w) = s.split();
        let write = async {
            w.write_all(&data).await?;
            w.shutdown().await
        };
        let mut got = Vec::new();
        let read = r.read_to_end(&mut got);
        let (a, b) = tokio::join!(write, read);
        a.and(b).map(|_| got)
    }

    #[tokio::test]
    async fn without_faults_every_byte_passes() {
        let up = echo_server().await;
        let p = proxy(up, 0.0, 1).await;
        let got = roundtrip(p.addr, 1 << 20).await.expect("a clean roundtrip");
        assert_eq!(got.len(), 1 << 20);
        assert_eq!(p.stats.faults(), 0);
    }

    #[tokio::test]
    async fn with_every_connection_faulty_no_large_transfer_gets_through_whole() {
        let up = echo_server().await;
        let p = proxy(up, 1.0, 7).await;
        let mut broken = 0;
        for _ in 0..12 {
            match roundtrip(p.addr, 1 << 20).await {
                Ok(got) if got.len() == 1 << 20 => {}
                _ => broken += 1,
            }
        }
        let delayed = p.stats.latencies.load(Ordering::Relaxed);
        // One request per connection, each drew a fault; all but the merely delayed ones lost
        // bytes, and those were counted.
        assert_eq!(p.stats.exchanges.load(Ordering::Relaxed), 12);
        assert_eq!(p.stats.faults(), 12, "{}", p.stats.summary());
        assert_eq!(broken, 12 - delayed, "{}", p.stats.summary());
    }

    /// A kept-alive connection carries many requests; each one is a separate draw.
    #[tokio::test]
    async fn each_request_on_a_kept_alive_connection_is_counted() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let up = l.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.expect("accept");
            let mut b = [0u8; 4];
            while s.read_exact(&mut b).await.is_ok() {
                let _ = s.write_all(b"pong").await;
            }
        });
        let p = proxy(up, 0.0, 3).await;
        let mut c = TcpStream::connect(p.addr).await.expect("connect");
        let mut b = [0u8; 4];
        for _ in 0..20 {
            c.write_all(b"ping").await.expect("write");
            c.read_exact(&mut b).await.expect("read");
            assert_eq!(&b, b"pong");
        }
        assert_eq!(p.stats.connections.load(Ordering::Relaxed), 1);
        assert_eq!(p.stats.exchanges.load(Ordering::Relaxed), 20);
    }

    #[test]
    fn the_draw_is_reproducible_from_its_seed_and_near_its_rate() {
        let mut a = ChaCha8Rng::seed_from_u64(42);
        let mut b = ChaCha8Rng::seed_from_u64(42);
        let fa: Vec<Fault> = (0..1000).map(|_| draw(&mut a, 0.1)).collect();
        let fb: Vec<Fault> = (0..1000).map(|_| draw(&mut b, 0.1)).collect();
        assert_eq!(fa, fb);
        let faulty = fa.iter().filter(|f| **f != Fault::None).count();
        assert!((60..=140).contains(&faulty), "{faulty} of 1000 at rate 0.1");
    }
}
