//! A fault-injecting TCP proxy, and a cluster whose every directed peer link
//! goes through one (issue #9: partitions of real processes).
//!
//! [`Proxy`] listens on a free loopback port and forwards each connection to
//! its target, byte for byte, on two threads per connection. Its faults:
//! [`Proxy::partition`] closes every open connection at once — what either
//! side had sent and the other had not read yet is lost, as in a real
//! partition — and closes every new one as soon as it is accepted, until
//! [`Proxy::heal`]; [`Proxy::delay`] holds every chunk it forwards for a
//! while. Dropping the proxy closes everything and joins its threads.
//!
//! [`ProxiedCluster`] is a [`Cluster`] whose node `i` reaches node `j`'s
//! peer port through a proxy of its own for the link `i → j`
//! (`ckpt-server --peer-via j=PROXY`); clients and admin requests go to
//! the nodes directly. [`ProxiedCluster::isolate`] cuts every link to and
//! from a node.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{Cluster, Server};

/// How long the proxy waits for its target to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One forwarded connection: both sockets, to close them from outside.
struct Link {
    id: u64,
    client: TcpStream,
    server: TcpStream,
}

impl Link {
    fn close(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

#[derive(Default)]
struct State {
    partitioned: bool,
    links: Vec<Link>,
    next_id: u64,
    /// Forwarding threads, joined on drop (finished ones pruned on the way).
    threads: Vec<JoinHandle<()>>,
    /// Connections accepted since the start (forwarded or closed).
    accepted: u64,
}

struct Shared {
    target: SocketAddr,
    delay_ms: AtomicU64,
    stopping: AtomicBool,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn forget(&self, id: u64) {
        self.state().links.retain(|l| l.id != id);
    }
}

/// A TCP proxy on a loopback port forwarding to one target.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy on a free loopback port forwarding to `target` (which
    /// need not be listening yet: a connection it refuses is closed).
    pub fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port for a proxy");
        let addr = listener.local_addr().expect("bound");
        let shared = Arc::new(Shared {
            target,
            delay_ms: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            state: Mutex::new(State::default()),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("proxy-{}", addr.port()))
                .spawn(move || accept_loop(listener, shared))
                .expect("proxy thread starts")
        };
        Proxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Closes every open connection (bytes in flight are lost) and every
    /// new one, until [`Proxy::heal`].
    pub fn partition(&self) {
        let links = {
            let mut state = self.shared.state();
            state.partitioned = true;
            std::mem::take(&mut state.links)
        };
        for link in &links {
            link.close();
        }
    }

    /// Forwards new connections again (the ones closed stay closed: the
    /// nodes reconnect).
    pub fn heal(&self) {
        self.shared.state().partitioned = false;
    }

    /// Whether [`Proxy::partition`] is in force.
    pub fn partitioned(&self) -> bool {
        self.shared.state().partitioned
    }

    /// Holds every chunk forwarded from now on for `ms` milliseconds (0:
    /// none).
    pub fn delay(&self, ms: u64) {
        self.shared.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// Connections being forwarded now.
    pub fn open_connections(&self) -> usize {
        self.shared.state().links.len()
    }

    /// Connections accepted since the start (forwarded or closed at once).
    pub fn accepted(&self) -> u64 {
        self.shared.state().accepted
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.partition();
        // Wake the acceptor blocked in accept(2).
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let threads = std::mem::take(&mut self.shared.state().threads);
        for thread in threads {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for incoming in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = incoming else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        {
            let mut state = shared.state();
            state.accepted += 1;
            if state.partitioned {
                // Closed at once: the connecting node sees its peer go away.
                drop(client);
                continue;
            }
        }
        let Ok(server) = TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) else {
            // The target is down: so is the link.
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(client_copy), Ok(server_copy), Ok(client_read), Ok(server_read)) = (
            client.try_clone(),
            server.try_clone(),
            client.try_clone(),
            server.try_clone(),
        ) else {
            continue;
        };
        let mut state = shared.state();
        // Checked again under the lock `partition` takes: a connection made
        // while it ran is closed, not forwarded.
        if state.partitioned || shared.stopping.load(Ordering::SeqCst) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
            continue;
        }
        let id = state.next_id;
        state.next_id += 1;
        state.links.push(Link {
            id,
            client: client_copy,
            server: server_copy,
        });
        state.threads.retain(|t| !t.is_finished());
        for (from, to) in [(client_read, server), (server_read, client)] {
            let shared = shared.clone();
            let thread = std::thread::Builder::new()
                .name("proxy-pump".into())
                .spawn(move || pump(shared, id, from, to))
                .expect("proxy thread starts");
            state.threads.push(thread);
        }
    }
}

/// Copies `from` to `to` until either ends; then closes both directions.
fn pump(shared: Arc<Shared>, id: u64, mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let delay = shared.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    shared.forget(id);
}

/// A [`Cluster`] whose every directed peer link `i → j` goes through its own
/// [`Proxy`]. Derefs to the [`Cluster`], so the helpers of
/// `common/cluster.rs` take it as one (`&mut *proxied` or `&proxied`).
pub struct ProxiedCluster {
    /// The cluster (dropped first: the nodes stop before their links).
    pub cluster: Cluster,
    /// The proxy of each link `(from, to)`.
    links: BTreeMap<(u64, u64), Proxy>,
}

impl ProxiedCluster {
    /// Starts `n` nodes with `extra` TOML keys (top level) in the file, every
    /// peer link through a proxy, and waits until the cluster formed.
    pub fn start(n: usize, extra: &str) -> ProxiedCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut text = format!("{extra}\n");
        let mut client_addrs = Vec::new();
        let mut admin_addrs = Vec::new();
        let mut peer_addrs = Vec::new();
        // Below the ephemeral range the proxies' own ports come from (see
        // `free_ports`), so none is handed out twice.
        let ports = super::free_ports(3 * n);
        for id in 1..=n {
            let (client, peer, admin) = (ports[3 * id - 3], ports[3 * id - 2], ports[3 * id - 1]);
            client_addrs.push(format!("127.0.0.1:{client}"));
            admin_addrs.push(format!("127.0.0.1:{admin}"));
            peer_addrs.push(SocketAddr::from(([127, 0, 0, 1], peer)));
            text.push_str(&format!(
                "[[nodes]]\nid = {id}\nclient_addr = \"127.0.0.1:{client}\"\npeer_addr = \"127.0.0.1:{peer}\"\nadmin_addr = \"127.0.0.1:{admin}\"\n"
            ));
        }
        let mut links = BTreeMap::new();
        for from in 1..=n as u64 {
            for to in 1..=n as u64 {
                if from != to {
                    links.insert((from, to), Proxy::start(peer_addrs[(to - 1) as usize]));
                }
            }
        }
        let config = dir.path().join("cluster.toml");
        std::fs::write(&config, text).expect("write cluster.toml");
        let mut proxied = ProxiedCluster {
            cluster: Cluster {
                nodes: (0..n).map(|_| None).collect(),
                config,
                client_addrs,
                admin_addrs,
                dir,
            },
            links,
        };
        for id in 1..=n as u64 {
            proxied.restart(id);
        }
        proxied.cluster.wait_formed();
        proxied
    }

    /// (Re)starts node `id`, reaching every peer through its link's proxy.
    pub fn restart(&mut self, id: u64) {
        let data = self.cluster.data_dir(id);
        std::fs::create_dir_all(&data).expect("node data dir");
        let mut args = vec![
            "--config".to_string(),
            self.cluster.config.display().to_string(),
            "--node-id".to_string(),
            id.to_string(),
            "--data-dir".to_string(),
            data.display().to_string(),
        ];
        for ((from, to), proxy) in &self.links {
            if *from == id {
                args.push("--peer-via".into());
                args.push(format!("{to}={}", proxy.addr));
            }
        }
        let server = Server::spawn(&data, &args);
        self.cluster.nodes[(id - 1) as usize] = Some(server);
    }

    /// The proxy of the link `from → to`.
    pub fn link(&self, from: u64, to: u64) -> &Proxy {
        self.links
            .get(&(from, to))
            .unwrap_or_else(|| panic!("no link {from} -> {to}"))
    }

    /// Partitions node `id` from every other node: every link to and from
    /// it is cut (its clients still reach it).
    pub fn isolate(&self, id: u64) {
        for ((from, to), proxy) in &self.links {
            if *from == id || *to == id {
                proxy.partition();
            }
        }
    }

    /// Restores every link to and from node `id`.
    pub fn heal(&self, id: u64) {
        for ((from, to), proxy) in &self.links {
            if *from == id || *to == id {
                proxy.heal();
            }
        }
    }

    /// Restores every link.
    pub fn heal_all(&self) {
        for proxy in self.links.values() {
            proxy.heal();
        }
    }
}

impl Deref for ProxiedCluster {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        &self.cluster
    }
}

impl DerefMut for ProxiedCluster {
    fn deref_mut(&mut self) -> &mut Cluster {
        &mut self.cluster
    }
}
