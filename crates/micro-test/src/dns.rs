//! A name server of a test's own: answers TXT and A queries over UDP from records the
//! test sets (custom domains are verified by TXT records, `MICRO_DNS` points the server
//! here; an ACME server finds a domain's address by its A record).

use hickory_proto::op::Message;
use hickory_proto::rr::{RData, Record, RecordType, rdata::TXT};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A TXT name server on 127.0.0.1; stops when dropped.
pub struct TxtServer {
    /// `ip:port` it answers on.
    pub addr: String,
    records: Arc<Mutex<HashMap<String, String>>>,
    addresses: Arc<Mutex<HashMap<String, std::net::Ipv4Addr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TxtServer {
    /// Starts one with no records.
    pub async fn start() -> TxtServer {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("a UDP socket");
        let addr = socket.local_addr().expect("its address").to_string();
        let records: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let addresses: Arc<Mutex<HashMap<String, std::net::Ipv4Addr>>> = Arc::default();
        let answers = records.clone();
        let ips = addresses.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else { return };
                let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
                let mut answer = query.clone().into_response();
                for q in &query.queries {
                    let name = q.name().to_string().trim_end_matches('.').to_ascii_lowercase();
                    let value = answers.lock().unwrap_or_else(|e| e.into_inner()).get(&name).cloned();
                    if let (RecordType::TXT, Some(v)) = (q.query_type(), value) {
                        answer.add_answer(Record::from_rdata(q.name().clone(), 1, RData::TXT(TXT::new(vec![v]))));
                    }
                    let ip = ips.lock().unwrap_or_else(|e| e.into_inner()).get(&name).copied();
                    if let (RecordType::A, Some(ip)) = (q.query_type(), ip) {
                        answer.add_answer(Record::from_rdata(q.name().clone(), 1, RData::A(ip.into())));
                    }
                }
                if let Ok(bytes) = answer.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        TxtServer { addr, records, addresses, task }
    }

    /// Answers `value` for TXT queries of `name` from now on.
    pub fn set(&self, name: &str, value: &str) {
        self.records.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_ascii_lowercase(), value.to_string());
    }
}

impl TxtServer {
    /// Answers `ip` for A queries of `name` from now on.
    pub fn set_a(&self, name: &str, ip: std::net::Ipv4Addr) {
        self.addresses.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_ascii_lowercase(), ip);
    }
}

impl Drop for TxtServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
