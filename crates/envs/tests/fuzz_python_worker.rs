//! The Python worker's request decoders (envs/mvp_envs/worker.py) driven with malformed
//! requests, byte by byte as a broken or hostile parent would send them: one worker process on
//! pipes (the project's venv, `make setup`) hosting two `Pendulum-v1` environments receives
//! random frames — random tags, bodies of random bytes, counts that lie about the body — and
//! must answer each with exactly one frame (an `ERROR` or the request's own reply) within the
//! deadline, stay usable, and never allocate by a length field: an oversized frame ends it at
//! once instead.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use rand::{Rng, SeedableRng};

/// Random requests sent to one worker (the README's fuzzing table quotes this).
const REQUESTS: usize = 3000;
const DEADLINE: Duration = Duration::from_secs(20);

struct Worker {
    child: Child,
    stdin: ChildStdin,
    replies: Receiver<Option<(u8, Vec<u8>)>>,
}

impl Worker {
    fn start() -> Self {
        let mut cmd = mvp_envs::python_module_command("mvp_envs.worker").unwrap();
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let (stdin, mut stdout) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
        let (tx, replies) = channel();
        std::thread::spawn(move || loop {
            let mut len = [0u8; 4];
            if stdout.read_exact(&mut len).is_err() {
                let _ = tx.send(None);
                return;
            }
            let mut payload = vec![0u8; u32::from_le_bytes(len) as usize];
            if stdout.read_exact(&mut payload).is_err() || payload.is_empty() {
                let _ = tx.send(None);
                return;
            }
            if tx.send(Some((payload[0], payload[1..].to_vec()))).is_err() {
                return;
            }
        });
        Self { child, stdin, replies }
    }

    fn send(&mut self, tag: u8, body: &[u8]) {
        let mut frame = ((body.len() + 1) as u32).to_le_bytes().to_vec();
        frame.push(tag);
        frame.extend_from_slice(body);
        self.stdin.write_all(&frame).unwrap();
        self.stdin.flush().unwrap();
    }

    /// The reply to the last request; fails the test on a missing one.
    fn reply(&self, what: &str) -> (u8, Vec<u8>) {
        match self.replies.recv_timeout(DEADLINE) {
            Ok(Some(reply)) => reply,
            Ok(None) => panic!("the worker ended instead of answering {what}"),
            Err(_) => panic!("no reply within {DEADLINE:?} to {what}"),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const HELLO: u8 = 0x01;
const RESET: u8 = 0x02;
const STEP: u8 = 0x03;
const PING: u8 = 0x04;
const RENDER: u8 = 0x06;
const ERROR: u8 = 0xFF;

fn u32s(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A random request: mostly the real tags with bodies that are almost right (a count, then
/// bytes), some pure noise.
fn random_request(rng: &mut impl Rng) -> (u8, Vec<u8>) {
    // Any tag but CLOSE (0x05), which ends the worker by design.
    let other = match rng.random::<u8>() {
        0x05 => 0x07,
        t => t,
    };
    let tag = [RESET, STEP, RENDER, PING, HELLO, other][rng.random_range(0..6)];
    let mut body = Vec::new();
    if rng.random_bool(0.7) {
        let k: u32 = match rng.random_range(0..4) {
            0 => rng.random_range(0..4),
            1 => u32::MAX,
            2 => rng.random_range(1 << 20..1 << 30),
            _ => rng.random(),
        };
        body.extend(u32s(&[k]));
    }
    let tail = match rng.random_range(0..3) {
        0 => rng.random_range(0..16),
        1 => rng.random_range(0..64),
        _ => rng.random_range(0..1024),
    };
    body.extend((0..tail).map(|_| rng.random::<u8>()));
    if tag == HELLO && rng.random_bool(0.5) {
        body = br#"{"protocol": 3, "env_id": "Pendulum-v1", "num_envs": 99}"#.to_vec();
    }
    (tag, body)
}

#[test]
fn malformed_requests_get_one_reply_each_and_leave_the_worker_usable() {
    let mut w = Worker::start();
    w.send(HELLO, br#"{"protocol": 3, "env_id": "Pendulum-v1", "num_envs": 2}"#);
    assert_eq!(w.reply("the handshake").0, 0x81, "READY");
    let mut rng = rand::rngs::StdRng::seed_from_u64(31);
    let mut errors = 0;
    for n in 0..REQUESTS {
        let (tag, body) = random_request(&mut rng);
        w.send(tag, &body);
        let (reply, message) = w.reply(&format!("request {n} (tag {tag:#04x}, {} bytes)", body.len()));
        if reply == ERROR {
            errors += 1;
            assert!(message.len() > 1, "an ERROR carries its kind and a message");
        } else {
            assert!(reply == tag | 0x80, "request {n} (tag {tag:#04x}) answered with {reply:#04x}");
        }
    }
    assert!(errors > REQUESTS / 2, "most random requests are refused ({errors})");
    // Still usable: a proper reset and step of both environments.
    let mut reset = u32s(&[2]);
    for i in 0..2u32 {
        reset.extend(i.to_le_bytes());
        reset.push(1);
        reset.extend(5u64.to_le_bytes());
    }
    w.send(RESET, &reset);
    assert_eq!(w.reply("a valid reset").0, 0x82);
    let mut step = u32s(&[2, 0, 1]);
    step.extend([0.5f32, -0.5].iter().flat_map(|a| a.to_le_bytes()));
    w.send(STEP, &step);
    let (tag, body) = w.reply("a valid step");
    assert_eq!((tag, body.len()), (0x83, 4 + 2 * 3 * 4 + 2 * 4 + 3 * 2));
}

#[test]
fn a_frame_longer_than_the_limit_ends_the_worker_without_reading_it() {
    let mut w = Worker::start();
    w.send(HELLO, br#"{"protocol": 3, "env_id": "Pendulum-v1", "num_envs": 1}"#);
    assert_eq!(w.reply("the handshake").0, 0x81);
    w.stdin.write_all(&u32::MAX.to_le_bytes()).unwrap();
    w.stdin.flush().unwrap();
    assert_eq!(w.replies.recv_timeout(DEADLINE).expect("the worker ends at once"), None);
    let status = w.child.wait().unwrap();
    assert!(!status.success(), "{status}");
}

#[test]
fn a_large_length_field_alone_allocates_nothing() {
    let mut w = Worker::start();
    w.send(PING, &[]);
    assert_eq!(w.reply("a ping").0, 0x84);
    // 512 MiB announced (under the 1 GiB limit), 16 bytes sent: the worker waits for the rest
    // with what arrived, not with a buffer of the announced size.
    w.stdin.write_all(&(512u32 << 20).to_le_bytes()).unwrap();
    w.stdin.write_all(&[0x04; 16]).unwrap();
    w.stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let status = std::fs::read_to_string(format!("/proc/{}/status", w.child.id())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    assert!(peak_kib < 256 << 10, "peak resident memory {peak_kib} KiB after a 512 MiB length field");
}
