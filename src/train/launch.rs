//! Where a training process sits in the experiment's topology.
//!
//! The experiment says how many nodes train together and which devices each uses; the same
//! file serves every node. What differs between nodes comes from the launch: the node's
//! rank, and (when the file does not name it) the orchestrator's address. The global rank
//! of device i of node n is n × devices + i; rank 0 (device 0 of node 0) is the main
//! replica: it logs, validates and checkpoints into the run folder.
//!
//! Node 0 hosts burn-collective's orchestrator, the coordinator through which the nodes
//! find each other, on the port of `topology.orchestrator` (as torchrun's rendezvous lives
//! at node 0's MASTER_ADDR:MASTER_PORT). Each node also serves its tensors to the others
//! for the all-reduce, by default on the orchestrator's port + 1 + its node rank.

use std::net::{TcpListener, ToSocketAddrs, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::collective::{DEFAULT_TIMEOUT, GlobalLink};
use crate::spec::{Backend, Topology, split_host_port};

/// Launch settings that are not part of the experiment. See [`Launch::from_env`].
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// This machine's rank among `topology.nodes` (0: the node that writes the run folder).
    pub node_rank: usize,
    /// `host:port` of the orchestrator (node 0); overrides `topology.orchestrator`.
    pub orchestrator: Option<String>,
    /// `host[:port]` at which the other nodes reach this one.
    pub node_address: Option<String>,
    /// How long a peer waits for the others at one collective call.
    pub timeout: Duration,
}

impl Default for Launch {
    fn default() -> Self {
        Launch {
            node_rank: 0,
            orchestrator: None,
            node_address: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// Environment variables read by [`Launch::from_env`] (flags of `ddexp run` override them).
pub const NODE_RANK_VAR: &str = "DDEXP_NODE_RANK";
pub const ORCHESTRATOR_VAR: &str = "DDEXP_ORCHESTRATOR";
pub const NODE_ADDRESS_VAR: &str = "DDEXP_NODE_ADDRESS";
pub const TIMEOUT_VAR: &str = "DDEXP_COLLECTIVE_TIMEOUT";

impl Launch {
    /// The defaults, overridden by `DDEXP_NODE_RANK`, `DDEXP_ORCHESTRATOR`,
    /// `DDEXP_NODE_ADDRESS` and `DDEXP_COLLECTIVE_TIMEOUT` (seconds) where they are set.
    pub fn from_env() -> Result<Launch> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Launch> {
        let mut launch = Launch::default();
        if let Some(v) = var(NODE_RANK_VAR) {
            launch.node_rank = v
                .trim()
                .parse()
                .with_context(|| format!("{NODE_RANK_VAR}={v:?} is not a node rank (0, 1, ...)"))?;
        }
        launch.orchestrator = var(ORCHESTRATOR_VAR).filter(|v| !v.trim().is_empty());
        launch.node_address = var(NODE_ADDRESS_VAR).filter(|v| !v.trim().is_empty());
        if let Some(v) = var(TIMEOUT_VAR) {
            let seconds: u64 = v
                .trim()
                .parse()
                .with_context(|| format!("{TIMEOUT_VAR}={v:?} is not a number of seconds"))?;
            launch.timeout = Duration::from_secs(seconds);
        }
        Ok(launch)
    }
}

/// This process's place in the topology.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The backend this node's replicas run on (the experiment's, unless a resume moves it).
    pub backend: Backend,
    pub node_rank: usize,
    /// Peers over all nodes.
    pub world: usize,
    /// Global rank of this node's first device.
    pub first_rank: usize,
    /// Device indices of this node, one replica each.
    pub devices: Vec<usize>,
    /// How this node joins the others (several nodes only).
    pub global: Option<GlobalLink>,
    /// The orchestrator port this node hosts (node 0 of several).
    pub hosts_orchestrator: Option<u16>,
    pub timeout: Duration,
}

impl Placement {
    /// Resolves `launch` against `topology`, with precise errors for what does not fit.
    pub fn new(topology: &Topology, launch: &Launch) -> Result<Placement> {
        let nodes = topology.nodes;
        if launch.node_rank >= nodes {
            bail!(
                "node rank {} is not a node of this experiment: topology.nodes is {nodes}, so the ranks are 0 to {}",
                launch.node_rank,
                nodes - 1
            );
        }
        let devices = topology.devices.clone();
        let mut placement = Placement {
            backend: topology.backend,
            node_rank: launch.node_rank,
            world: topology.world_size(),
            first_rank: launch.node_rank * devices.len(),
            devices,
            global: None,
            hosts_orchestrator: None,
            timeout: launch.timeout,
        };
        if nodes == 1 {
            return Ok(placement);
        }
        let Some(orchestrator) = launch
            .orchestrator
            .clone()
            .or_else(|| topology.orchestrator.clone())
        else {
            bail!(
                "topology.nodes is {nodes} but no orchestrator address is given: set topology.orchestrator to node 0's host:port (e.g. \"10.0.0.1:29500\"), or pass --orchestrator / {ORCHESTRATOR_VAR} on every node"
            );
        };
        let (host, port) = split_host_port(&orchestrator).with_context(|| {
            format!("the orchestrator address `{orchestrator}` is not host:port")
        })?;
        let (node_host, node_port) = match &launch.node_address {
            Some(a) => match split_host_port(a) {
                Ok((h, p)) => (h, p),
                Err(_) => (a.trim_start_matches("ws://").to_string(), 0),
            },
            None => (route_to(&host, port)?, 0),
        };
        let node_port = if node_port == 0 {
            port.checked_add(1 + launch.node_rank as u16)
                .context("the orchestrator port leaves no room for the nodes' ports")?
        } else {
            node_port
        };
        placement.global = Some(GlobalLink {
            nodes,
            orchestrator: format!("ws://{host}:{port}"),
            node_address: format!("ws://{node_host}:{node_port}"),
            data_port: node_port,
        });
        if launch.node_rank == 0 {
            placement.hosts_orchestrator = Some(port);
        }
        Ok(placement)
    }

    /// Whether this process holds the main replica (and so writes the run folder).
    pub fn is_main(&self) -> bool {
        self.first_rank == 0
    }
}

/// This machine's IP address on the route to `host` (no packet is sent: connecting a UDP
/// socket only picks the route).
fn route_to(host: &str, port: u16) -> Result<String> {
    let target = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve the orchestrator host `{host}`"))?
        .next()
        .with_context(|| format!("the orchestrator host `{host}` has no address"))?;
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = UdpSocket::bind(bind).context("opening a socket to find this node's address")?;
    socket.connect(target).with_context(|| {
        format!("no route to the orchestrator at {target}; pass --node-address")
    })?;
    let ip = socket.local_addr()?.ip();
    Ok(if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    })
}

/// Starts burn-collective's orchestrator on `port` for the life of this process.
pub fn host_orchestrator(port: u16) -> Result<()> {
    // Fail here, clearly, rather than in the orchestrator's own thread where nobody hears it.
    TcpListener::bind(("0.0.0.0", port)).with_context(|| {
        format!(
            "cannot host the orchestrator on port {port} (in use by another run?); choose another port in topology.orchestrator"
        )
    })?;
    quiet_burn_logs();
    std::thread::Builder::new()
        .name("ddexp-orchestrator".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a tokio runtime for the orchestrator");
            runtime.block_on(burn_collective::start_global_orchestrator(port));
            // The orchestrator returns on Ctrl-C; the sessions it opened keep running on
            // this runtime until the training ends.
            runtime.block_on(std::future::pending::<()>());
        })
        .context("starting the orchestrator thread")?;
    Ok(())
}

/// Keeps burn-collective's networking quiet: burn-communication installs a logger that
/// prints every tensor transfer to stdout (a silent global subscriber installed first keeps
/// it out), and a failed transfer panics inside burn's runtime with a full backtrace, which
/// is shortened to one line here. The peers then report what failed.
pub fn quiet_burn_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing::dispatcher::set_global_default(tracing::Dispatch::none());
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or_default();
            if name.starts_with("tokio-") || name == "ddexp-collective" {
                let message = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                eoutln!("burn-collective: {message}");
            } else {
                previous(info);
            }
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(nodes: usize, orchestrator: Option<&str>) -> Topology {
        Topology {
            devices: vec![0, 1],
            nodes,
            orchestrator: orchestrator.map(str::to_string),
            ..Topology::default()
        }
    }

    #[test]
    fn environment_sets_the_launch() {
        let env = |name: &str| match name {
            NODE_RANK_VAR => Some("1".to_string()),
            ORCHESTRATOR_VAR => Some("10.0.0.1:29500".to_string()),
            TIMEOUT_VAR => Some("30".to_string()),
            _ => None,
        };
        let launch = Launch::from_vars(env).unwrap();
        assert_eq!(launch.node_rank, 1);
        assert_eq!(launch.orchestrator.as_deref(), Some("10.0.0.1:29500"));
        assert_eq!(launch.node_address, None);
        assert_eq!(launch.timeout, Duration::from_secs(30));
        assert_eq!(Launch::from_vars(|_| None).unwrap(), Launch::default());
        let bad = Launch::from_vars(|n| (n == NODE_RANK_VAR).then(|| "one".to_string()));
        assert!(format!("{:#}", bad.unwrap_err()).contains("DDEXP_NODE_RANK"));
    }

    #[test]
    fn ranks_and_ports_follow_the_node_rank() {
        let launch = Launch {
            node_rank: 1,
            ..Launch::default()
        };
        let p = Placement::new(&topology(2, Some("127.0.0.1:29500")), &launch).unwrap();
        assert_eq!((p.world, p.first_rank, p.is_main()), (4, 2, false));
        let g = p.global.unwrap();
        assert_eq!(g.orchestrator, "ws://127.0.0.1:29500");
        assert_eq!(g.node_address, "ws://127.0.0.1:29502");
        assert_eq!(g.data_port, 29502);
        assert_eq!(p.hosts_orchestrator, None);

        // The launch's address wins over the file's; node 0 hosts the orchestrator.
        let launch = Launch {
            orchestrator: Some("ws://127.0.0.1:4000".into()),
            node_address: Some("127.0.0.1:5000".into()),
            ..Launch::default()
        };
        let p = Placement::new(&topology(2, Some("10.9.9.9:29500")), &launch).unwrap();
        assert!(p.is_main());
        assert_eq!(p.hosts_orchestrator, Some(4000));
        let g = p.global.unwrap();
        assert_eq!(g.orchestrator, "ws://127.0.0.1:4000");
        assert_eq!(
            (g.node_address.as_str(), g.data_port),
            ("ws://127.0.0.1:5000", 5000)
        );

        // One node needs no orchestrator.
        let p = Placement::new(&topology(1, None), &Launch::default()).unwrap();
        assert!(p.global.is_none() && p.hosts_orchestrator.is_none());
        assert_eq!((p.world, p.first_rank), (2, 0));
    }

    #[test]
    fn misplaced_launches_are_refused() {
        let rank2 = Launch {
            node_rank: 2,
            ..Launch::default()
        };
        let e = Placement::new(&topology(2, Some("h:1")), &rank2).unwrap_err();
        assert!(e.to_string().contains("ranks are 0 to 1"), "{e}");
        let e = Placement::new(&topology(2, None), &Launch::default()).unwrap_err();
        assert!(e.to_string().contains("--orchestrator"), "{e}");
        let e = Placement::new(&topology(2, Some("nohost")), &Launch::default()).unwrap_err();
        assert!(format!("{e:#}").contains("not host:port"), "{e:#}");
    }
}
