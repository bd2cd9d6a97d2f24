//! The import graph of `datapath` and `server`, checked against the one drawn in docs/ARCHITECTURE.md.
//!
//! Every source file belongs to a module node (`datapath::backend::xdp` for
//! `datapath/src/backend/xdp/*.rs`, `server::endpoint` for `server/src/endpoint/*.rs`, `server::bin` for
//! the binary). Every path a file names
//! (`crate::…`, `datapath::…`, `server::…`, in code or doc links) is an arrow from its node to the node named.
//! The arrows found must be exactly the ones listed between the `layers:begin` and `layers:end` markers of
//! docs/ARCHITECTURE.md, and they must form no circle. Also: `datapath` depends on nothing that knows QUIC,
//! the canvas or HTTP. Run: `cargo test --release -p server --test layering -- --nocapture`.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The node of a file under `<crate>/src`: `backend` and `ops` have one node per child module, the
/// binary is one node, `lib.rs` is none (it only declares modules).
fn node_of(krate: &str, rel: &Path) -> Option<String> {
    let parts: Vec<String> =
        rel.with_extension("").components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    match parts.as_slice() {
        [lib] if lib == "lib" => None,
        [b, ..] if b == "bin" => Some(format!("{krate}::bin")),
        [group, m, ..] if (group == "backend" || group == "ops") && m != "mod" => {
            Some(format!("{krate}::{group}::{m}"))
        }
        [m, ..] => Some(format!("{krate}::{m}")),
        [] => None,
    }
}

/// The node a path names (`backend::xdp::XdpSocket` → `backend::xdp`), if it names a module of `krate`.
fn target(krate: &str, path: &str) -> Option<String> {
    let segs: Vec<&str> = path.split("::").collect();
    let first = *segs.first()?;
    if first.is_empty() || !first.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
        return None;
    }
    match (first, segs.get(1)) {
        ("backend" | "ops", Some(m)) if m.chars().all(|c| c.is_ascii_lowercase() || c == '_') => {
            Some(format!("{krate}::{first}::{m}"))
        }
        _ => Some(format!("{krate}::{first}")),
    }
}

/// Every `crate::`/`datapath::`/`server::` path in `text`, as the node it names.
fn references(krate: &str, text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    for prefix in ["crate::", "datapath::", "server::"] {
        let mut from = 0;
        while let Some(i) = text[from..].find(prefix) {
            let at = from + i;
            from = at + prefix.len();
            // A whole word: `xcrate::` or `my_server::` do not count.
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            let rest: String = text[from..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let owner = if prefix == "crate::" { krate } else { prefix.trim_end_matches("::") };
            if let Some(t) = target(owner, &rest) {
                out.insert(t);
            }
        }
    }
    out
}

fn code_graph() -> Graph {
    let mut g = Graph::new();
    for krate in ["datapath", "server"] {
        let src = root().join(krate).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        for f in files {
            let rel = f.strip_prefix(&src).expect("under src");
            let Some(node) = node_of(krate, rel) else { continue };
            let text = fs::read_to_string(&f).expect("read source");
            let entry = g.entry(node.clone()).or_default();
            for t in references(krate, &text) {
                // Inside a node, and the `ops` umbrella module naming its own children, are not arrows.
                if t != node && !(node == format!("{krate}::ops") && t.starts_with(&node)) {
                    entry.insert(t);
                }
            }
        }
    }
    g
}

/// The arrows drawn in docs/ARCHITECTURE.md: lines `a -> b, c` (or `a ->`) between the markers.
fn drawn_graph() -> Graph {
    let doc = fs::read_to_string(root().join("docs/ARCHITECTURE.md")).expect("read docs/ARCHITECTURE.md");
    let marker = "<!-- layers:begin -->";
    let begin = doc.find(marker).expect("layers:begin marker in docs/ARCHITECTURE.md") + marker.len();
    let end = doc.find("<!-- layers:end -->").expect("layers:end marker in docs/ARCHITECTURE.md");
    let mut g = Graph::new();
    for line in doc[begin..end].lines() {
        let Some((from, to)) = line.split_once("->") else { continue };
        let set = g.entry(from.trim().to_string()).or_default();
        for t in to.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            set.insert(t.to_string());
        }
    }
    g
}

fn render(g: &Graph) -> String {
    g.iter().map(|(k, v)| format!("{k} -> {}\n", v.iter().cloned().collect::<Vec<_>>().join(", "))).collect()
}

#[test]
fn imports_match_the_drawing_and_point_one_way() {
    let code = code_graph();
    println!("import graph of the code:\n{}", render(&code));
    let drawn = drawn_graph();
    let mut missing = Vec::new();
    let mut extra = Vec::new();
    for (from, tos) in &code {
        for t in tos {
            if !drawn.get(from).is_some_and(|d| d.contains(t)) {
                extra.push(format!("{from} -> {t}"));
            }
        }
    }
    for (from, tos) in &drawn {
        for t in tos {
            if !code.get(from).is_some_and(|c| c.contains(t)) {
                missing.push(format!("{from} -> {t}"));
            }
        }
    }
    let nodes: BTreeSet<_> = code.keys().collect();
    let drawn_nodes: BTreeSet<_> = drawn.keys().collect();
    assert_eq!(nodes, drawn_nodes, "the modules drawn are not the modules in the code");
    assert!(
        extra.is_empty() && missing.is_empty(),
        "docs/ARCHITECTURE.md and the code disagree.\nin the code, not drawn: {extra:#?}\ndrawn, not in the \
         code: {missing:#?}"
    );

    // No circle: repeatedly remove nodes nothing left points to... i.e. a topological order exists.
    let mut left: Graph = code.clone();
    while !left.is_empty() {
        let sink =
            left.iter().find(|(_, tos)| tos.iter().all(|t| !left.contains_key(t))).map(|(k, _)| k.clone());
        match sink {
            Some(k) => {
                left.remove(&k);
            }
            None => panic!("a circle among: {}", left.keys().cloned().collect::<Vec<_>>().join(", ")),
        }
    }

    // Nothing in packet I/O points up, and the server core never imports the operations layer.
    for (from, tos) in &code {
        if from.starts_with("datapath::") {
            assert!(
                tos.iter().all(|t| t.starts_with("datapath::")),
                "{from} imports above packet I/O: {tos:?}"
            );
        }
        if from.starts_with("server::") && !from.starts_with("server::ops") && from != "server::bin" {
            assert!(
                !tos.iter().any(|t| t.starts_with("server::ops") || t == "server::bin"),
                "the server core ({from}) imports the operations layer or the binary: {tos:?}"
            );
        }
    }
}

#[test]
fn datapath_depends_on_nothing_above_packets() {
    let manifest = fs::read_to_string(root().join("datapath/Cargo.toml")).expect("read datapath/Cargo.toml");
    let deps = manifest
        .split("\n[")
        .find(|s| s.starts_with("dependencies]"))
        .expect("datapath has a [dependencies] table");
    let names: Vec<&str> = deps
        .lines()
        .skip(1)
        .filter_map(|l| l.split(['.', ' ', '=']).next())
        .filter(|n| !n.is_empty())
        .collect();
    println!("datapath [dependencies]: {}", names.join(", "));
    for forbidden in
        ["quiche", "canvas", "hugepages", "tiny_http", "png", "crossbeam-queue", "server", "ring"]
    {
        assert!(!names.contains(&forbidden), "datapath depends on {forbidden}");
    }
}
