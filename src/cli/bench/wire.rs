//! The load generator's HTTP/1.1 client: one keep-alive connection, one request at a time,
//! requests written from their parts and answers parsed with `httparse` (the parser hyper
//! uses), into one reused buffer each way.
//!
//! Why not hyper's client connection, which it used before: a generator that shares the
//! machine with the system it measures takes CPU from it, and hyper's client spent ~21 k
//! instructions per request here (a `Request` and a `HeaderMap` built for every request,
//! another `HeaderMap` for every answer, a channel and a task between the caller and the
//! connection), 5 µs of CPU per request against 8 µs of the kernel's (callgrind and
//! `/proc` counts of a 64-client run; docs/BENCHMARKS.md, "The load generator's client").
//! What an answer can be is what HTTP/1.1 allows a server to send to these requests: a
//! body framed by `Content-Length`, by chunked transfer coding or by the connection's
//! close, interim 1xx answers before the final one, and `Connection: close`.

use std::pin::Pin;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::header::HeaderValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The most header lines an answer may have.
const HEADERS_MAX: usize = 64;
/// The most bytes an answer's head may take; past this it is refused as garbage.
const HEAD_BYTES_MAX: usize = 64 << 10;
/// The most bytes one answer's body may take.
const BODY_BYTES_MAX: usize = 64 << 20;

/// A request, as its parts: the generator's are built per request from a few fixed pieces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `GET`, `PUT` or `POST`.
    pub method: &'static str,
    /// The path and query.
    pub path: String,
    /// The body (empty for none).
    pub body: Bytes,
    /// Whether the body is JSON (`Content-Type: application/json`).
    pub json: bool,
    /// The `Authorization` header, if any.
    pub authorization: Option<HeaderValue>,
}

impl Call {
    /// Appends the request to `out`, for the server at `host` (HOST:PORT).
    pub fn encode(&self, host: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(host.as_bytes());
        if let Some(authorization) = &self.authorization {
            out.extend_from_slice(b"\r\nauthorization: ");
            out.extend_from_slice(authorization.as_bytes());
        }
        if self.json {
            out.extend_from_slice(b"\r\ncontent-type: application/json");
        }
        // As hyper's client did: a GET without a body announces none.
        if !(self.body.is_empty() && self.method == "GET") {
            out.extend_from_slice(b"\r\ncontent-length: ");
            out.extend_from_slice(self.body.len().to_string().as_bytes());
        }
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&self.body);
    }
}

/// A byte stream a connection runs over: TCP, or TLS over TCP.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<S: AsyncRead + AsyncWrite + Send + Unpin> Stream for S {}

/// One keep-alive HTTP/1.1 connection.
pub struct Connection {
    stream: Pin<Box<dyn Stream>>,
    host: String,
    /// Bytes read and not yet part of an answer.
    read: BytesMut,
    write: Vec<u8>,
    /// False once the server said it closes the connection after an answer.
    reusable: bool,
}

impl Connection {
    /// A connection over `stream` to the server at `host` (HOST:PORT, its `Host` header).
    pub fn new(stream: impl Stream + 'static, host: &str) -> Connection {
        Connection {
            stream: Box::pin(stream),
            host: host.to_string(),
            read: BytesMut::with_capacity(16 << 10),
            write: Vec::with_capacity(1 << 10),
            reusable: true,
        }
    }

    /// Whether another request may be sent on it.
    pub fn is_reusable(&self) -> bool {
        self.reusable
    }

    /// Sends `call` and reads its whole answer: the status and the body. The error is its
    /// kind, for the report: `connection closed`, `timeout` or `http error: ...`.
    pub async fn exchange(
        &mut self,
        call: &Call,
        timeout: Duration,
    ) -> Result<(u16, Bytes), String> {
        if !self.reusable {
            return Err("connection closed".into());
        }
        let answered = tokio::time::timeout(timeout, self.round_trip(call)).await;
        let answered = answered.unwrap_or_else(|_| Err("timeout".into()));
        if answered.is_err() {
            // Its state is unknown after a timeout or a transport error.
            self.reusable = false;
        }
        answered
    }

    async fn round_trip(&mut self, call: &Call) -> Result<(u16, Bytes), String> {
        self.write.clear();
        call.encode(&self.host, &mut self.write);
        let closed = |_| "connection closed".to_string();
        self.stream.write_all(&self.write).await.map_err(closed)?;
        self.stream.flush().await.map_err(closed)?;
        let mut at_eof = false;
        loop {
            match parse_answer(&self.read, at_eof)? {
                Some(answer) => {
                    let mut message = self.read.split_to(answer.len);
                    if !answer.keep_alive {
                        self.reusable = false;
                    }
                    let body = match answer.body {
                        Body::Within(range) => {
                            message.advance(range.start);
                            message.truncate(range.len());
                            message.freeze()
                        }
                        Body::Chunked(body) => body,
                    };
                    return Ok((answer.status, body));
                }
                None if at_eof => return Err("connection closed".into()),
                None => {}
            }
            if self.read.capacity() - self.read.len() < 4 << 10 {
                self.read.reserve(16 << 10);
            }
            at_eof = self.stream.read_buf(&mut self.read).await.map_err(closed)? == 0;
        }
    }
}

/// A whole answer found at the start of the buffer.
#[derive(Debug, PartialEq)]
struct Answer {
    status: u16,
    /// Bytes the answer takes, interim answers before it included.
    len: usize,
    body: Body,
    keep_alive: bool,
}

#[derive(Debug, PartialEq)]
enum Body {
    /// The body is these bytes of the answer as they are.
    Within(std::ops::Range<usize>),
    /// A chunked body, joined.
    Chunked(Bytes),
}

/// Finds a whole answer at the start of `buf` (`None` while it is incomplete); `at_eof` when
/// the server has closed its side, which ends a body framed by the connection's close.
fn parse_answer(buf: &[u8], at_eof: bool) -> Result<Option<Answer>, String> {
    let mut start = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut response = httparse::Response::new(&mut headers);
        let head_len = match response.parse(&buf[start..]) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() - start > HEAD_BYTES_MAX => {
                return Err(format!(
                    "http error: an answer head over {HEAD_BYTES_MAX} bytes"
                ))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(format!("http error: {e}")),
        };
        let status = response.code.unwrap_or(0);
        let body_start = start + head_len;
        // An interim answer (100 Continue, 103 Early Hints) precedes the real one.
        if (100..200).contains(&status) && status != 101 {
            start = body_start;
            continue;
        }
        let framing = Framing::of(&response)?;
        let keep_alive = framing.keep_alive;
        let bodiless = status == 204 || status == 304;
        let answer = |len, body, keep_alive| {
            Some(Answer {
                status,
                len,
                body,
                keep_alive,
            })
        };
        if bodiless {
            return Ok(answer(
                body_start,
                Body::Within(body_start..body_start),
                keep_alive,
            ));
        }
        if framing.chunked {
            return Ok(match dechunk(&buf[body_start..])? {
                Some((body, used)) => answer(body_start + used, Body::Chunked(body), keep_alive),
                None => None,
            });
        }
        if let Some(length) = framing.content_length {
            if length > BODY_BYTES_MAX {
                return Err(format!("http error: a body of {length} bytes announced"));
            }
            let end = body_start + length;
            return Ok(if buf.len() >= end {
                answer(end, Body::Within(body_start..end), keep_alive)
            } else {
                None
            });
        }
        // No length: the body runs to the connection's close.
        if buf.len() - body_start > BODY_BYTES_MAX {
            return Err(format!("http error: a body over {BODY_BYTES_MAX} bytes"));
        }
        return Ok(if at_eof {
            answer(buf.len(), Body::Within(body_start..buf.len()), false)
        } else {
            None
        });
    }
}

/// How an answer's body is delimited, and whether the connection stays open.
struct Framing {
    content_length: Option<usize>,
    chunked: bool,
    keep_alive: bool,
}

impl Framing {
    fn of(response: &httparse::Response<'_, '_>) -> Result<Framing, String> {
        let mut framing = Framing {
            content_length: None,
            chunked: false,
            keep_alive: response.version == Some(1),
        };
        for header in response.headers.iter() {
            let value = std::str::from_utf8(header.value).unwrap_or("").trim();
            if header.name.eq_ignore_ascii_case("content-length") {
                let length: usize = value
                    .parse()
                    .map_err(|_| format!("http error: content-length {value:?}"))?;
                if framing.content_length.is_some_and(|l| l != length) {
                    return Err("http error: two different content-lengths".into());
                }
                framing.content_length = Some(length);
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                // Chunked is the last coding when present (RFC 9112 §6.1).
                framing.chunked = value
                    .rsplit(',')
                    .next()
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
            } else if header.name.eq_ignore_ascii_case("connection") {
                for option in value.split(',').map(str::trim) {
                    if option.eq_ignore_ascii_case("close") {
                        framing.keep_alive = false;
                    } else if option.eq_ignore_ascii_case("keep-alive") {
                        framing.keep_alive = true;
                    }
                }
            }
        }
        Ok(framing)
    }
}

/// Joins a chunked body at the start of `buf`: the body and the bytes it took, trailers
/// included; `None` while incomplete.
fn dechunk(buf: &[u8]) -> Result<Option<(Bytes, usize)>, String> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(line_end) = find_crlf(&buf[at..]) else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[at..at + line_end]).unwrap_or("");
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| format!("http error: chunk size {size:?}"))?;
        if body.len().saturating_add(size) > BODY_BYTES_MAX {
            return Err(format!("http error: a body over {BODY_BYTES_MAX} bytes"));
        }
        at += line_end + 2;
        if size == 0 {
            // Trailer lines, then an empty line.
            loop {
                let Some(line_end) = find_crlf(&buf[at..]) else {
                    return Ok(None);
                };
                at += line_end + 2;
                if line_end == 0 {
                    return Ok(Some((Bytes::from(body), at)));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err("http error: a chunk not followed by CRLF".into());
        }
        body.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(method: &'static str, path: &str, body: &'static str, json: bool) -> Call {
        Call {
            method,
            path: path.to_string(),
            body: Bytes::from_static(body.as_bytes()),
            json,
            authorization: None,
        }
    }

    #[test]
    fn requests_are_written_as_http_1_1() {
        let mut out = Vec::new();
        call("GET", "/v1/kv/k?consistency=lease", "", false).encode("127.0.0.1:1", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /v1/kv/k?consistency=lease HTTP/1.1\r\nhost: 127.0.0.1:1\r\n\r\n"
        );
        let mut out = Vec::new();
        let mut put = call("POST", "/v3/kv/put", "{}", true);
        put.authorization = Some(HeaderValue::from_static("Basic dTpw"));
        put.encode("h:2", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /v3/kv/put HTTP/1.1\r\nhost: h:2\r\nauthorization: Basic dTpw\r\n\
             content-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        );
    }

    fn whole(buf: &[u8], at_eof: bool) -> (u16, Vec<u8>, usize, bool) {
        match parse_answer(buf, at_eof).expect("parses") {
            Some(answer) => {
                let body = match answer.body {
                    Body::Within(range) => buf[range].to_vec(),
                    Body::Chunked(body) => body.to_vec(),
                };
                (answer.status, body, answer.len, answer.keep_alive)
            }
            None => panic!("incomplete: {:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn answers_are_framed_by_length_chunks_or_close() {
        let sized = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhelloHTTP/1.1";
        assert_eq!(whole(sized, false), (200, b"hello".to_vec(), 43, true));
        let chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n\
                        3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: 1\r\n\r\nrest";
        assert_eq!(
            whole(chunked, false),
            (404, b"abcde".to_vec(), chunked.len() - 4, true)
        );
        let by_close = b"HTTP/1.1 200 OK\r\n\r\nall of it";
        assert!(matches!(parse_answer(by_close, false), Ok(None)));
        assert_eq!(
            whole(by_close, true),
            (200, b"all of it".to_vec(), by_close.len(), false)
        );
        let closing = b"HTTP/1.1 503 x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(whole(closing, false), (503, vec![], closing.len(), false));
        let old = b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx";
        assert!(
            !whole(old, false).3,
            "HTTP/1.0 closes unless told otherwise"
        );
        let interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(whole(interim, false), (204, vec![], interim.len(), true));
    }

    #[test]
    fn every_strict_prefix_of_an_answer_is_incomplete() {
        let answers: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx",
        ];
        for answer in answers {
            for end in 0..answer.len() {
                assert_eq!(
                    parse_answer(&answer[..end], false),
                    Ok(None),
                    "{:?}",
                    String::from_utf8_lossy(&answer[..end])
                );
            }
            assert!(matches!(parse_answer(answer, false), Ok(Some(_))));
        }
    }

    #[test]
    fn garbage_answers_are_errors_not_panics() {
        let garbage: [&[u8]; 6] = [
            b"not http at all\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: five\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nxx",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nabc\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999\r\n\r\n",
        ];
        for answer in garbage {
            assert!(
                parse_answer(answer, false).is_err(),
                "{:?}",
                String::from_utf8_lossy(answer)
            );
        }
    }

    /// Against hyper's server: keep-alive answers in a row, a chunked one, and a server
    /// that closes after its answer.
    #[tokio::test]
    async fn a_connection_talks_to_hyper_and_notices_a_close() {
        use http_body_util::{BodyExt, Full, StreamBody};
        use hyper::body::Frame;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(
                |request: hyper::Request<hyper::body::Incoming>| async move {
                    let path = request.uri().path().to_string();
                    let body = request.into_body().collect().await.unwrap().to_bytes();
                    let reply = format!("{path}:{}", String::from_utf8_lossy(&body));
                    let response = match path.as_str() {
                        "/chunked" => {
                            let frames = futures_util::stream::iter(
                                [reply.clone(), "!".to_string()].map(|s| {
                                    Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(s)))
                                }),
                            );
                            hyper::Response::new(StreamBody::new(frames).boxed())
                        }
                        "/close" => {
                            let mut response =
                                hyper::Response::new(Full::new(Bytes::from(reply)).boxed());
                            response
                                .headers_mut()
                                .insert("connection", HeaderValue::from_static("close"));
                            response
                        }
                        _ => hyper::Response::new(Full::new(Bytes::from(reply)).boxed()),
                    };
                    Ok::<_, std::convert::Infallible>(response)
                },
            );
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
        let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut connection = Connection::new(stream, &addr);
        let timeout = Duration::from_secs(5);
        for i in 0..3 {
            let put = call("PUT", "/a", if i == 1 { "" } else { "body" }, false);
            let (status, body) = connection.exchange(&put, timeout).await.unwrap();
            assert_eq!(
                (status, body),
                (200, Bytes::from(if i == 1 { "/a:" } else { "/a:body" }))
            );
        }
        let get = call("GET", "/chunked", "", false);
        let (status, body) = connection.exchange(&get, timeout).await.unwrap();
        assert_eq!((status, body), (200, Bytes::from_static(b"/chunked:!")));
        assert!(connection.is_reusable());
        let (status, body) = connection
            .exchange(&call("GET", "/close", "", false), timeout)
            .await
            .unwrap();
        assert_eq!((status, body), (200, Bytes::from_static(b"/close:")));
        assert!(!connection.is_reusable(), "the server said it closes");
        assert_eq!(
            connection.exchange(&get, timeout).await,
            Err("connection closed".to_string())
        );
    }
}
