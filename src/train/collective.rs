//! Burn's collective operations for data-parallel training, with a deadline and a way out.
//!
//! Every model replica is a *peer* with a global rank (node rank × devices per node + local
//! index). The peers of one process register with burn-collective's local server (one per
//! process and backend); with several nodes that server also joins the global collective
//! through the orchestrator (hosted by node 0, see [`super::launch`]). Every reduction here
//! is a sum of one flat f32 tensor, so that replicas built separately (other threads, other
//! machines) pair their values by position rather than by Burn's random parameter ids.
//!
//! burn-collective 0.21 has no timeouts: a call waits until every peer has made the same call.
//! So each call runs on a helper thread and the peer waits for the answer with a deadline.
//! A peer of this process that fails raises the group's abort flag and resets the local
//! server, which releases the others at once. A node that dies is noticed by burn when a
//! transfer to it fails (an error within seconds), or else by the deadline.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};
use burn_collective::{
    CollectiveConfig, CollectiveError, PeerId, ReduceOperation, all_reduce, finish_collective,
    register, reset_collective,
};

/// How long a peer waits for the others at one collective call unless told otherwise: long
/// enough for node 0 to write a checkpoint of a large model while the others wait for it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// The largest tensor handed to burn-collective at once. Transfers between nodes travel as
/// single WebSocket messages, and burn's receivers refuse frames over 512 MiB.
const CHUNK: usize = 1 << 25;

/// How long leaving may take: nothing waits for the other peers then, and a node whose
/// orchestrator (node 0) has already exited should not hang at the end of a finished run.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a waiting peer checks the abort flag.
const POLL: Duration = Duration::from_millis(50);

/// burn-collective keeps one local server per process and backend, so one process runs one
/// group of peers at a time (tests that train with several peers wait here for each other).
static SESSION: Mutex<()> = Mutex::new(());

/// Why a collective call failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Another peer of this process failed first; its error is the one to report.
    #[error("stopped because another peer of this process failed")]
    Aborted,
    #[error(
        "no answer from the other peers within {} s ({what}): a peer or node stopped, hangs, or cannot be reached (raise the limit with --collective-timeout or DDEXP_COLLECTIVE_TIMEOUT if a slow checkpoint explains it)",
        .timeout.as_secs()
    )]
    TimedOut { timeout: Duration, what: String },
    #[error(
        "lost the other peers ({what}; burn-collective: {detail}): a peer or node stopped or cannot be reached"
    )]
    Lost { what: String, detail: String },
}

/// How a node's local server joins the others (several nodes only).
#[derive(Debug, Clone)]
pub struct GlobalLink {
    pub nodes: usize,
    /// `ws://host:port` of the orchestrator.
    pub orchestrator: String,
    /// `ws://host:port` at which the other nodes reach this node's tensor service.
    pub node_address: String,
    pub data_port: u16,
}

/// The peers of this process: ranks `first_rank .. first_rank + local` of `world`.
pub struct Group<B: Backend> {
    first_rank: usize,
    local: usize,
    world: usize,
    timeout: Duration,
    config: CollectiveConfig,
    abort: Arc<AtomicBool>,
    _session: MutexGuard<'static, ()>,
    phantom: PhantomData<fn() -> B>,
}

impl<B: Backend> Group<B> {
    /// Waits until no other group of this process is running, then starts from a clean
    /// local server (a failed group leaves its state behind).
    pub fn new(
        first_rank: usize,
        local: usize,
        world: usize,
        global: Option<&GlobalLink>,
        timeout: Duration,
    ) -> Result<Self> {
        let session = SESSION
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        reset_server::<B>();
        let mut config = CollectiveConfig::default().with_num_devices(local);
        if let Some(g) = global {
            config = config
                .with_num_nodes(g.nodes as u32)
                .with_global_address(g.orchestrator.parse().map_err(|e: String| {
                    anyhow::anyhow!("invalid orchestrator address `{}`: {e}", g.orchestrator)
                })?)
                .with_node_address(g.node_address.parse().map_err(|e: String| {
                    anyhow::anyhow!("invalid node address `{}`: {e}", g.node_address)
                })?)
                .with_data_service_port(g.data_port);
        }
        Ok(Group {
            first_rank,
            local,
            world,
            timeout,
            config,
            abort: Arc::new(AtomicBool::new(false)),
            _session: session,
            phantom: PhantomData,
        })
    }

    /// One unregistered peer per local replica, in rank order.
    pub fn peers(&self) -> Vec<Peer<B>> {
        (0..self.local)
            .map(|i| Peer {
                rank: self.first_rank + i,
                world: self.world,
                link: Some(Link {
                    timeout: self.timeout,
                    config: self.config.clone(),
                    abort: self.abort.clone(),
                    device: None,
                    finished: false,
                }),
            })
            .collect()
    }
}

/// One model replica's handle on the collective.
pub struct Peer<B: Backend> {
    rank: usize,
    world: usize,
    /// None for the only replica of a one-device run: every reduction is the identity.
    link: Option<Link<B>>,
}

struct Link<B: Backend> {
    timeout: Duration,
    config: CollectiveConfig,
    abort: Arc<AtomicBool>,
    /// Set once registered.
    device: Option<B::Device>,
    finished: bool,
}

impl<B: Backend> Peer<B> {
    /// The only replica of a one-device, one-node run.
    pub fn solo() -> Self {
        Peer {
            rank: 0,
            world: 1,
            link: None,
        }
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// Joins the collective with the replica on `device`; returns once every peer of every
    /// node has joined.
    pub fn register(&mut self, device: &B::Device) -> Result<()> {
        let id = PeerId(self.rank as u32);
        let Some(link) = self.link.as_mut() else {
            return Ok(());
        };
        let (dev, config) = (device.clone(), link.config.clone());
        let deadline = link.timeout;
        wait(&link.abort, deadline, "joining", move || {
            register::<B>(id, dev, config)
        })?;
        link.device = Some(device.clone());
        Ok(())
    }

    /// The elementwise sum of `tensor` over all peers (`tensor` itself for a solo peer).
    /// `what` names the call in error messages.
    pub fn sum(&self, tensor: Tensor<B, 1>, what: &str) -> Result<Tensor<B, 1>> {
        let Some(link) = &self.link else {
            return Ok(tensor);
        };
        let n = tensor.dims()[0];
        // Burn's ring all-reduce between nodes needs at least one element per node.
        let padded = if n < self.world {
            let pad = Tensor::zeros([self.world - n], &tensor.device());
            Tensor::cat(vec![tensor, pad], 0)
        } else {
            tensor
        };
        let len = padded.dims()[0];
        let pieces = len.div_ceil(CHUNK);
        let mut sums = Vec::with_capacity(pieces);
        for k in 0..pieces {
            let (from, to) = (k * len / pieces, (k + 1) * len / pieces);
            let part = padded
                .clone()
                .narrow(0, from, to - from)
                .into_primitive()
                .tensor();
            let id = PeerId(self.rank as u32);
            let summed = wait(&link.abort, link.timeout, what, move || {
                all_reduce::<B>(id, part, ReduceOperation::Sum)
            })?;
            sums.push(Tensor::from_primitive(TensorPrimitive::Float(summed)));
        }
        let sum = if sums.len() == 1 {
            sums.pop().expect("one piece")
        } else {
            Tensor::cat(sums, 0)
        };
        Ok(if n < len { sum.narrow(0, 0, n) } else { sum })
    }

    /// [`Peer::sum`] of a few host values: exact for a solo peer, rounded to f32 otherwise.
    pub fn sum_values(&self, values: &[f64], what: &str) -> Result<Vec<f64>> {
        let Some(device) = self.link.as_ref().map(|l| l.device.clone()) else {
            return Ok(values.to_vec());
        };
        let device = device.context("a peer must register before it reduces")?;
        let data: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        let tensor = Tensor::<B, 1>::from_data(TensorData::new(data, [values.len()]), &device);
        let sum = self.sum(tensor, what)?;
        Ok(sum
            .into_data()
            .convert::<f64>()
            .to_vec::<f64>()
            .expect("f64 values"))
    }

    /// Leaves the collective after the last reduction. A peer dropped without finishing
    /// (an error, a panic) aborts its group instead.
    pub fn finish(mut self) -> Result<()> {
        let id = PeerId(self.rank as u32);
        let Some(link) = self.link.as_mut() else {
            return Ok(());
        };
        link.finished = true;
        if link.device.is_none() {
            return Ok(());
        }
        wait(
            &link.abort,
            link.timeout.min(LEAVE_TIMEOUT),
            "leaving",
            move || finish_collective::<B>(id),
        )?;
        Ok(())
    }
}

impl<B: Backend> Drop for Peer<B> {
    fn drop(&mut self) {
        if let Some(link) = &self.link
            && !link.finished
        {
            link.abort.store(true, Ordering::SeqCst);
            reset_server::<B>();
        }
    }
}

/// Forgets every registration and pending operation of this process's local server; peers
/// waiting in an operation get an error. Never panics (it runs in `Drop`).
fn reset_server<B: Backend>() {
    // The client panics if burn's server task has died; there is nothing left to reset then.
    let _ = std::panic::catch_unwind(reset_collective::<B>);
}

/// Runs `op` on a helper thread and waits for it, at most `timeout`, giving up early when
/// the group is aborted.
fn wait<T: Send + 'static>(
    abort: &AtomicBool,
    timeout: Duration,
    what: &str,
    op: impl FnOnce() -> Result<T, CollectiveError> + Send + 'static,
) -> Result<T, PeerError> {
    let (tx, rx) = mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("ddexp-collective".into())
        .spawn(move || {
            let _ = tx.send(op());
        });
    if let Err(e) = spawned {
        return Err(PeerError::Lost {
            what: what.into(),
            detail: format!("cannot start a thread: {e}"),
        });
    }
    let started = Instant::now();
    loop {
        match rx.recv_timeout(POLL) {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => {
                if abort.load(Ordering::SeqCst) {
                    return Err(PeerError::Aborted);
                }
                return Err(PeerError::Lost {
                    what: what.into(),
                    detail: format!("{e:?}"),
                });
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(PeerError::Lost {
                    what: what.into(),
                    detail: "its server stopped".into(),
                });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if abort.load(Ordering::SeqCst) {
                    return Err(PeerError::Aborted);
                }
                if started.elapsed() >= timeout {
                    return Err(PeerError::TimedOut {
                        timeout,
                        what: what.into(),
                    });
                }
            }
        }
    }
}

/// The error to report when peers fail together: one that is not merely the consequence of
/// another peer's failure, else the first.
pub fn root_cause(errors: Vec<anyhow::Error>) -> Option<anyhow::Error> {
    let consequence = |e: &anyhow::Error| {
        e.chain()
            .any(|c| matches!(c.downcast_ref::<PeerError>(), Some(PeerError::Aborted)))
    };
    let peer_error = |e: &anyhow::Error| e.chain().any(|c| c.is::<PeerError>());
    let mut errors = errors;
    let pick = errors
        .iter()
        .position(|e| !peer_error(e))
        .or_else(|| errors.iter().position(|e| !consequence(e)))
        .unwrap_or(0);
    (!errors.is_empty()).then(|| errors.swap_remove(pick))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn values(t: Tensor<Flex, 1>) -> Vec<f32> {
        t.into_data().to_vec().unwrap()
    }

    /// Runs `f(peer)` for every peer of a local group of `n`, each on its own thread.
    fn with_peers<T: Send>(
        n: usize,
        timeout: Duration,
        f: impl Fn(Peer<Flex>) -> T + Sync,
    ) -> Vec<T> {
        let group = Group::<Flex>::new(0, n, n, None, timeout).unwrap();
        std::thread::scope(|scope| {
            let handles: Vec<_> = group
                .peers()
                .into_iter()
                .map(|peer| scope.spawn(|| f(peer)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    #[test]
    fn peers_sum_tensors_of_any_length() {
        let sums = with_peers(3, DEFAULT_TIMEOUT, |mut peer| {
            let device = Default::default();
            peer.register(&device).unwrap();
            let r = peer.rank() as f32;
            // Shorter than the world (padded) and longer than one element.
            let short = peer.sum(Tensor::from_floats([r], &device), "test").unwrap();
            let long = peer
                .sum(Tensor::from_floats([r, 1.0, 2.0 * r, 0.5], &device), "test")
                .unwrap();
            let host = peer.sum_values(&[r as f64, 1.0], "test").unwrap();
            peer.finish().unwrap();
            (values(short), values(long), host)
        });
        for (short, long, host) in sums {
            assert_eq!(short, [3.0]);
            assert_eq!(long, [3.0, 3.0, 6.0, 1.5]);
            assert_eq!(host, [3.0, 3.0]);
        }
    }

    #[test]
    fn a_solo_peer_sums_nothing() {
        let peer = Peer::<Flex>::solo();
        let t = Tensor::from_floats([1.5, -2.0], &Default::default());
        assert_eq!(values(peer.sum(t, "test").unwrap()), [1.5, -2.0]);
        assert_eq!(peer.sum_values(&[0.1], "test").unwrap(), [0.1]);
        peer.finish().unwrap();
    }

    #[test]
    fn a_failed_peer_releases_the_others() {
        let results = with_peers(2, DEFAULT_TIMEOUT, |mut peer| {
            let device = Default::default();
            peer.register(&device).unwrap();
            if peer.rank() == 1 {
                // Fails without finishing: dropping the peer aborts the group.
                drop(peer);
                return None;
            }
            let t = Tensor::from_floats([1.0, 2.0], &device);
            Some(peer.sum(t, "test").map(|_| ()))
        });
        let err = results[0].as_ref().unwrap().as_ref().unwrap_err();
        assert!(
            matches!(err.downcast_ref::<PeerError>(), Some(PeerError::Aborted)),
            "{err:#}"
        );
    }

    #[test]
    fn a_silent_peer_makes_the_others_time_out() {
        let (tx, rx) = mpsc::channel::<()>();
        let rx = Mutex::new(rx);
        let results = with_peers(2, Duration::from_millis(300), |mut peer| {
            let device = Default::default();
            peer.register(&device).unwrap();
            if peer.rank() == 1 {
                // Alive but never reducing, until peer 0 has given up.
                rx.lock().unwrap().recv().unwrap();
                return None;
            }
            let t = Tensor::from_floats([1.0, 2.0], &device);
            let result = peer.sum(t, "the test's sum").map(|_| ());
            tx.send(()).unwrap();
            Some(result)
        });
        let err = results[0].as_ref().unwrap().as_ref().unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<PeerError>(),
                Some(PeerError::TimedOut { .. })
            ),
            "{err:#}"
        );
        assert!(err.to_string().contains("the test's sum"), "{err}");
    }

    #[test]
    fn the_root_cause_is_reported() {
        let aborted = || anyhow::Error::new(PeerError::Aborted).context("replica 0");
        let lost = || {
            anyhow::Error::new(PeerError::Lost {
                what: "x".into(),
                detail: "y".into(),
            })
        };
        let cause = anyhow::anyhow!("the data file is corrupt");
        let picked = root_cause(vec![aborted(), cause, lost()]).unwrap();
        assert_eq!(picked.to_string(), "the data file is corrupt");
        let picked = root_cause(vec![aborted(), lost()]).unwrap();
        assert!(picked.to_string().contains("lost the other peers"));
        assert!(root_cause(vec![]).is_none());
    }
}
