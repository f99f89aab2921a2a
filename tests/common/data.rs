//! A tiny HTTP server on 127.0.0.1, and writers for the input formats (zip, parquet, jsonl),
//! so that the data tests create all their data themselves.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A request the server saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
}

/// How the server behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Behaviour {
    /// Answer `Range: bytes=N-` with 206 (otherwise ignore it and send everything).
    pub ranges: bool,
    /// Cut the first answer for each path after this many body bytes, as a dropped
    /// connection would (the headers still announce the full length).
    pub cut_first_at: Option<usize>,
}

pub struct Server {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    /// Serves the bodies `routes(url)` returns, by path (e.g. "/text8.zip"); 404 otherwise.
    /// The server thread lives as long as the test process.
    pub fn start(
        behaviour: Behaviour,
        routes: impl FnOnce(&str) -> HashMap<String, Vec<u8>>,
    ) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let routes = routes(&url);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            let mut answered: HashMap<String, usize> = HashMap::new();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let Some(request) = read_request(&stream) else {
                    continue;
                };
                log.lock().unwrap().push(request.clone());
                let times = answered.entry(request.path.clone()).or_insert(0);
                *times += 1;
                let cut = behaviour.cut_first_at.filter(|_| *times == 1);
                answer(stream, &request, routes.get(&request.path), behaviour, cut);
            }
        });
        Server { url, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn read_request(stream: &TcpStream) -> Option<Seen> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut range = None;
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("range")
        {
            range = Some(value.trim().to_string());
        }
    }
    Some(Seen { path, range })
}

fn answer(
    mut stream: TcpStream,
    request: &Seen,
    body: Option<&Vec<u8>>,
    behaviour: Behaviour,
    cut: Option<usize>,
) {
    let Some(body) = body else {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let from = request
        .range
        .as_deref()
        .filter(|_| behaviour.ranges)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<usize>().ok());
    let head = match from {
        Some(from) if from >= body.len() => {
            let _ = write!(
                stream,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                body.len()
            );
            return;
        }
        Some(from) => format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {from}-{}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len() - 1,
            body.len(),
            body.len() - from
        ),
        None => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
            body.len()
        ),
    };
    let rest = &body[from.unwrap_or(0)..];
    let rest = &rest[..cut.unwrap_or(rest.len()).min(rest.len())];
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(rest);
    let _ = stream.flush();
}

/// A zip archive holding `files` (name, contents), deflated.
pub fn zip_bytes(files: &[(&str, &[u8])]) -> Vec<u8> {
    zip_with(files, zip::CompressionMethod::Deflated)
}

/// A zip archive holding `files` uncompressed, so their bytes appear verbatim in it.
pub fn zip_stored(files: &[(&str, &[u8])]) -> Vec<u8> {
    zip_with(files, zip::CompressionMethod::Stored)
}

fn zip_with(files: &[(&str, &[u8])], method: zip::CompressionMethod) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut zip = zip::ZipWriter::new(&mut out);
    for (name, contents) in files {
        let options = zip::write::SimpleFileOptions::default().compression_method(method);
        zip.start_file(*name, options).unwrap();
        zip.write_all(contents).unwrap();
    }
    zip.finish().unwrap();
    out.into_inner()
}

/// A parquet file with a `text` column (and an `id` column the reader must ignore).
pub fn write_parquet(path: &Path, docs: &[&str]) {
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    let schema =
        parse_message_type("message schema { required int64 id; optional binary text (UTF8); }")
            .unwrap();
    let props = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let file = File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, Arc::new(schema), Arc::new(props)).unwrap();
    let mut group = writer.next_row_group().unwrap();
    let mut ids = group.next_column().unwrap().unwrap();
    let id_values: Vec<i64> = (0..docs.len() as i64).collect();
    ids.typed::<Int64Type>()
        .write_batch(&id_values, None, None)
        .unwrap();
    ids.close().unwrap();
    let mut text = group.next_column().unwrap().unwrap();
    let values: Vec<ByteArray> = docs.iter().map(|d| ByteArray::from(*d)).collect();
    let definition = vec![1i16; docs.len()];
    text.typed::<ByteArrayType>()
        .write_batch(&values, Some(&definition), None)
        .unwrap();
    text.close().unwrap();
    group.close().unwrap();
    writer.close().unwrap();
}

/// A JSON-lines file with one `{"text": ..., "meta": ...}` object per document.
pub fn write_jsonl(path: &Path, docs: &[&str]) {
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        out.push_str(&serde_json::json!({ "text": doc, "meta": i }).to_string());
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

/// Entries of `dir` (names), to check that nothing was left behind.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// text8's ids, computed independently of ddexp: space 0, a–z 1–26.
pub fn text8_ids(text: &str) -> Vec<u32> {
    text.bytes()
        .map(|b| if b == b' ' { 0 } else { (b - b'a' + 1) as u32 })
        .collect()
}
