//! A worker listening on TCP serves only clients that hold its shared secret: real
//! `python -m mvp_envs.worker --listen` processes (the project's venv, `make setup`), the real
//! client, and raw connections for what the client never sends (no answer, a replayed one).

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mvp_envs::{PythonWorker, WorkerConfig, WorkerSecret, SECRET_ENV};

const FAULTY: &str = "mvp_envs/Faulty-v0";

/// A listening worker on a free loopback port, its address and its stderr lines so far.
struct Listener {
    child: Child,
    address: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Listener {
    /// Started with `--listen` (no address: the loopback default) and `args`; `config_home`
    /// replaces `$XDG_CONFIG_HOME` (where the default secret file lives).
    fn start(args: &[&str], config_home: &Path) -> Self {
        let mut cmd = mvp_envs::python_module_command("mvp_envs.worker").unwrap();
        cmd.arg("--listen").args(args).env_remove(SECRET_ENV).env("XDG_CONFIG_HOME", config_home);
        let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut address = None;
        for line in (&mut stderr).lines().map_while(Result::ok) {
            log.lock().unwrap().push(line.clone());
            if let Some(a) = line.strip_prefix("listening on ") {
                address = Some(a.to_string());
                break;
            }
        }
        let address = address.unwrap_or_else(|| panic!("no address in {:?}", log.lock().unwrap()));
        let sink = log.clone();
        std::thread::spawn(move || stderr.lines().map_while(Result::ok).for_each(|l| sink.lock().unwrap().push(l)));
        Self { child, address, log }
    }

    fn config(&self, secret: Option<WorkerSecret>) -> WorkerConfig {
        let mut config = WorkerConfig::new(FAULTY);
        config.address = Some(self.address.clone());
        config.startup_timeout = Duration::from_secs(60);
        config.secret = secret;
        config
    }

    /// Waits up to 10 s for `n` log lines containing `needle`.
    fn wait_lines(&self, needle: &str, n: usize) -> Vec<String> {
        for _ in 0..100 {
            let lines: Vec<String> = self.log.lock().unwrap().iter().filter(|l| l.contains(needle)).cloned().collect();
            if lines.len() >= n {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("fewer than {n} lines with {needle:?} in {:?}", self.log.lock().unwrap());
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One frame: u32 little-endian length, tag, body.
fn send(stream: &mut TcpStream, tag: u8, body: &[u8]) {
    let mut frame = ((body.len() + 1) as u32).to_le_bytes().to_vec();
    frame.push(tag);
    frame.extend_from_slice(body);
    stream.write_all(&frame).unwrap();
}

fn recv(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).unwrap();
    let mut payload = vec![0u8; u32::from_le_bytes(len) as usize];
    stream.read_exact(&mut payload).unwrap();
    (payload[0], payload[1..].to_vec())
}

const CHALLENGE: u8 = 0x87;
const HELLO: u8 = 0x01;
const READY: u8 = 0x81;
const ERROR: u8 = 0xFF;

/// A raw connection's challenge.
fn challenge(address: &str) -> (TcpStream, Vec<u8>) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let (tag, nonce) = recv(&mut stream);
    assert_eq!((tag, nonce.len()), (CHALLENGE, 32), "a connection opens with a 32-byte challenge");
    (stream, nonce)
}

fn hello(auth: Option<String>) -> Vec<u8> {
    let hello =
        serde_json::json!({"protocol": mvp_envs::PROTOCOL_VERSION, "env_id": FAULTY, "num_envs": 1, "auth": auth});
    hello.to_string().into_bytes()
}

/// The message of an ERROR reply (after its kind byte).
fn refusal(reply: (u8, Vec<u8>)) -> String {
    assert_eq!(reply.0, ERROR, "refused with an ERROR");
    String::from_utf8_lossy(&reply.1[1..]).into_owned()
}

/// A worker on the loopback whose secret is a file in `home` (mode 0600), and that secret.
fn worker_with_secret_file(home: &Path) -> (Listener, WorkerSecret) {
    let secret_file = home.join("secret");
    std::fs::write(&secret_file, "a-secret-of-the-test-0123456789\n").unwrap();
    std::fs::set_permissions(&secret_file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let worker = Listener::start(&["--secret-file", secret_file.to_str().unwrap()], home);
    (worker, WorkerSecret::from_file(&secret_file).unwrap())
}

#[test]
fn a_listening_worker_serves_its_secret_and_refuses_a_missing_wrong_or_replayed_one() {
    let home = tempfile::tempdir().unwrap();
    let (worker, secret) = worker_with_secret_file(home.path());
    assert!(worker.address.starts_with("127.0.0.1:"), "--listen alone binds the loopback: {}", worker.address);

    // The right secret: served, and served again on a new connection.
    for _ in 0..2 {
        let mut client = PythonWorker::spawn(worker.config(Some(secret.clone()))).unwrap_or_else(|e| panic!("{e:#}"));
        client.reset_envs(&[(0, Some(7))]).unwrap();
        assert_eq!(client.step_envs(&[0], &[0.1, 0.2]).unwrap().obs.len(), 3);
        client.close().unwrap();
    }

    // A wrong secret: the client's error is the worker's one line.
    let wrong = WorkerSecret::new("another-secret-0123456789", "test").unwrap();
    let err = format!("{:#}", PythonWorker::spawn(worker.config(Some(wrong))).unwrap_err());
    assert!(err.contains("refused by the env worker: wrong secret"), "{err}");
    // No secret here: the client says what to set before it sends anything.
    let err = format!("{:#}", PythonWorker::spawn(worker.config(None)).unwrap_err());
    assert!(err.contains("env.worker_secret_file") && err.contains(&worker.address), "{err}");

    // A HELLO without an answer, and a request before any HELLO.
    let (mut raw, _) = challenge(&worker.address);
    send(&mut raw, HELLO, &hello(None));
    assert!(refusal(recv(&mut raw)).contains("no secret given"));
    let (mut raw, _) = challenge(&worker.address);
    send(&mut raw, 0x03, &[0; 12]);
    assert!(refusal(recv(&mut raw)).contains("before the handshake"));

    // A recorded HELLO, replayed on a new connection, answers the old challenge: refused.
    let (mut first, nonce) = challenge(&worker.address);
    let recorded = hello(Some(secret.answer(&nonce)));
    send(&mut first, HELLO, &recorded);
    assert_eq!(recv(&mut first).0, READY, "the original HELLO is served");
    drop(first);
    let (mut replay, fresh) = challenge(&worker.address);
    assert_ne!(nonce, fresh, "every connection gets a fresh challenge");
    send(&mut replay, HELLO, &recorded);
    assert!(refusal(recv(&mut replay)).contains("wrong secret"));
    // Each refusal closes the connection and leaves a line in the worker's log.
    let mut rest = Vec::new();
    assert_eq!(replay.read_to_end(&mut rest).unwrap_or(0), 0, "the refused connection is closed");
    let refused = worker.wait_lines("refused connection from 127.0.0.1:", 4);
    assert!(refused.iter().any(|l| l.contains("no secret given")), "{refused:?}");
}

#[test]
fn a_listening_worker_without_a_secret_makes_one_that_only_its_user_reads() {
    let home = tempfile::tempdir().unwrap();
    let worker = Listener::start(&["127.0.0.1:0"], home.path());
    let file = home.path().join("mvp").join("worker-secret");
    worker.wait_lines("made a new worker secret at", 1);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let secret = WorkerSecret::from_file(&file).unwrap();
    assert_eq!(secret.expose().len(), 64, "32 random bytes in hex");
    let mut client = PythonWorker::spawn(worker.config(Some(secret))).unwrap_or_else(|e| panic!("{e:#}"));
    client.close().unwrap();
    // A second worker on the same machine reads the same file instead of replacing it.
    let before = std::fs::read(&file).unwrap();
    let again = Listener::start(&[], home.path());
    again.wait_lines("listening on", 1);
    assert_eq!(std::fs::read(&file).unwrap(), before);
}

#[test]
fn a_garbled_frame_after_the_handshake_ends_that_connection_not_the_worker() {
    let home = tempfile::tempdir().unwrap();
    let (worker, secret) = worker_with_secret_file(home.path());
    let (mut raw, nonce) = challenge(&worker.address);
    send(&mut raw, HELLO, &hello(Some(secret.answer(&nonce))));
    assert_eq!(recv(&mut raw).0, READY);
    raw.write_all(&u32::MAX.to_le_bytes()).unwrap(); // a length no frame may have
    let mut rest = Vec::new();
    assert_eq!(raw.read_to_end(&mut rest).unwrap_or(0), 0, "that connection is closed");
    worker.wait_lines("connection lost (bad frame length", 1);
    let mut client = PythonWorker::spawn(worker.config(Some(secret))).unwrap_or_else(|e| panic!("{e:#}"));
    client.close().unwrap();
}
