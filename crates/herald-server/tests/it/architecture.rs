//! The architecture's invariants that the code itself can show, checked on the sources: no
//! import circle among the files of any crate, and the wire, core and client crates know nothing
//! above them (the client only the wire). ARCHITECTURE.md's code map names the layers.
//!
//! A file imports another when it names a path into it: `crate::a::b`, `super::x`, `self::y`,
//! or, in a file that declares child modules, `child::z`, in `use` trees too. Test modules
//! (`#[cfg(test)] mod tests { … }`) are left out: a test may use what is above the code it
//! tests. Visibility paths (`pub(in crate::a)`) are not imports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[test]
fn no_crate_has_an_import_circle_among_its_files() {
    // Another checkout's `crates` may be looked at: HERALD_ARCHITECTURE_CRATES=DIR.
    let crates = std::env::var_os("HERALD_ARCHITECTURE_CRATES")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."), PathBuf::from);
    let mut checked = 0;
    let mut report = String::new();
    for entry in std::fs::read_dir(&crates).unwrap() {
        let src = entry.unwrap().path().join("src");
        if !src.join("lib.rs").exists() {
            continue;
        }
        let graph = import_graph(&src);
        assert!(graph.len() > 1 || src.ends_with("herald-bench/src"), "no modules found in {}", src.display());
        checked += 1;
        for circle in circles(&graph) {
            let krate = src.parent().and_then(Path::file_name).unwrap_or_default().to_string_lossy();
            report.push_str(&format!("{krate}: {}\n", circle.join(" -> ")));
        }
    }
    assert!(checked >= 5, "expected the workspace's library crates under {}", crates.display());
    assert!(report.is_empty(), "import circles (each file imports the next):\n{report}");
}

#[test]
fn the_checker_sees_a_circle_and_the_imports_that_make_it() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("room")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod room;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::room::{self, inner::Thing};\n").unwrap();
    std::fs::write(src.join("room/mod.rs"), "pub mod inner;\npub(in crate::a) struct S;\n").unwrap();
    std::fs::write(
        src.join("room/inner.rs"),
        "// crate::nothing\nfn f() { let _ = \"crate::a::x\"; super::super::a::g(); }\n\
         #[cfg(test)]\nmod tests { use crate::room; }\n",
    )
    .unwrap();
    let graph = import_graph(src);
    assert_eq!(graph["a"], BTreeSet::from(["room".to_string(), "room::inner".to_string()]));
    assert!(graph["room"].is_empty(), "a visibility path is no import: {:?}", graph["room"]);
    assert_eq!(graph["room::inner"], BTreeSet::from(["a".to_string()]));
    assert_eq!(circles(&graph), vec![vec!["a".to_string(), "room::inner".to_string(), "a".to_string()]]);
}

#[test]
fn the_wire_core_and_client_crates_depend_on_nothing_of_herald_above_them() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (krate, allowed) in
        [("herald-wire", &[][..]), ("herald-core", &[][..]), ("herald-client", &["herald-wire"][..])]
    {
        let manifest = std::fs::read_to_string(crates.join(krate).join("Cargo.toml")).unwrap();
        let herald_deps: Vec<&str> = manifest
            .lines()
            .filter_map(|line| line.split(['.', ' ', '=']).next())
            .filter(|name| name.starts_with("herald-") && !allowed.contains(name))
            .collect();
        assert!(herald_deps.is_empty(), "{krate} depends on {herald_deps:?}");
    }
}

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Every file of a crate's `src` as a module path (`a::b`; `lib.rs` and `main.rs` are the
/// root, ""), with the modules it imports.
fn import_graph(src: &Path) -> Graph {
    let mut files = BTreeMap::new();
    collect_files(src, src, &mut files);
    let modules: BTreeSet<String> = files.keys().cloned().collect();
    let mut graph = Graph::new();
    for (module, path) in &files {
        let text = strip(&std::fs::read_to_string(path).unwrap());
        let tokens = tokenize(&text);
        let children: BTreeSet<String> = declared_children(&tokens);
        let mut imports = BTreeSet::new();
        for full in paths(&tokens, module, &children) {
            if let Some(target) = longest_module(&full, &modules)
                && target != *module
                && !target.is_empty()
            {
                imports.insert(target);
            }
        }
        if !module.is_empty() {
            graph.insert(module.clone(), imports);
        }
    }
    graph
}

fn collect_files(root: &Path, dir: &Path, files: &mut BTreeMap<String, PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            // `src/bin/*` are binaries of their own, not modules of the library.
            if path != root.join("bin") {
                collect_files(root, &path, files);
            }
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            let relative = path.strip_prefix(root).unwrap().with_extension("");
            let mut parts: Vec<String> =
                relative.components().map(|part| part.as_os_str().to_string_lossy().into_owned()).collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                parts.pop();
            }
            files.insert(parts.join("::"), path);
        }
    }
}

/// The text without comments, string and char literals, test modules and visibility paths.
fn strip(text: &str) -> String {
    let bytes: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut index = 0;
    while index < bytes.len() {
        let rest = |offset: usize| bytes.get(index + offset).copied().unwrap_or('\0');
        match (bytes[index], rest(1)) {
            ('/', '/') => {
                while index < bytes.len() && bytes[index] != '\n' {
                    index += 1;
                }
            }
            ('/', '*') => {
                index += 2;
                while index + 1 < bytes.len() && !(bytes[index] == '*' && bytes[index + 1] == '/') {
                    index += 1;
                }
                index += 2;
            }
            ('r', '#') | ('r', '"') if !out.ends_with(|c: char| c.is_alphanumeric() || c == '_') => {
                let mut hashes = 0;
                let mut at = index + 1;
                while bytes.get(at) == Some(&'#') {
                    hashes += 1;
                    at += 1;
                }
                if bytes.get(at) != Some(&'"') {
                    out.push(bytes[index]);
                    index += 1;
                    continue;
                }
                at += 1;
                while at < bytes.len() && !(bytes[at] == '"' && (1..=hashes).all(|h| bytes.get(at + h) == Some(&'#'))) {
                    at += 1;
                }
                index = at + 1 + hashes;
                out.push_str("\"\"");
            }
            ('"', _) => {
                index += 1;
                while index < bytes.len() && bytes[index] != '"' {
                    index += if bytes[index] == '\\' { 2 } else { 1 };
                }
                index += 1;
                out.push_str("\"\"");
            }
            // A char literal ('x', '\n'), not a lifetime ('a).
            ('\'', _) if rest(2) == '\'' || (rest(1) == '\\' && (rest(3) == '\'' || rest(1) == '\\')) => {
                index += 1;
                while index < bytes.len() && bytes[index] != '\'' {
                    index += if bytes[index] == '\\' { 2 } else { 1 };
                }
                index += 1;
                out.push_str("' '");
            }
            (c, _) => {
                out.push(c);
                index += 1;
            }
        }
    }
    let out = remove_test_modules(&out);
    remove_visibility_paths(&out)
}

fn remove_test_modules(text: &str) -> String {
    let mut out = text.to_string();
    while let Some(at) = out.find("#[cfg(test)]") {
        let after = &out[at + "#[cfg(test)]".len()..];
        let Some(open) = after.find('{') else { break };
        let item = after[..open].trim();
        if !item.starts_with("mod ") && !item.starts_with("pub mod ") {
            // Another test-only item (a function, an impl): drop the attribute only.
            out.replace_range(at..at + "#[cfg(test)]".len(), "");
            continue;
        }
        let start = at + "#[cfg(test)]".len() + open;
        let mut depth = 0;
        let mut end = out.len();
        for (offset, c) in out[start..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = start + offset + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.replace_range(at..end, "");
    }
    out
}

fn remove_visibility_paths(text: &str) -> String {
    let mut out = text.to_string();
    while let Some(at) = out.find("pub(in ") {
        let end = out[at..].find(')').map_or(out.len(), |close| at + close + 1);
        out.replace_range(at..end, "pub ");
    }
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Open,
    Close,
    Comma,
    Other(char),
}

fn tokenize(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index];
        if c.is_alphanumeric() || c == '_' {
            let start = index;
            while index < chars.len() && (chars[index].is_alphanumeric() || chars[index] == '_') {
                index += 1;
            }
            tokens.push(Token::Ident(chars[start..index].iter().collect()));
            continue;
        }
        index += 1;
        tokens.push(match c {
            ':' if chars.get(index) == Some(&':') => {
                index += 1;
                Token::PathSep
            }
            '{' => Token::Open,
            '}' => Token::Close,
            ',' => Token::Comma,
            c if c.is_whitespace() => continue,
            c => Token::Other(c),
        });
    }
    tokens
}

/// The modules a file declares (`mod x;`, `pub mod x;`).
fn declared_children(tokens: &[Token]) -> BTreeSet<String> {
    let mut children = BTreeSet::new();
    for window in tokens.windows(3) {
        if let [Token::Ident(keyword), Token::Ident(name), Token::Other(';')] = window
            && keyword == "mod"
        {
            children.insert(name.clone());
        }
    }
    children
}

/// Every path the file names into its crate, made absolute (segments from the crate root).
fn paths(tokens: &[Token], module: &str, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let here: Vec<String> =
        if module.is_empty() { Vec::new() } else { module.split("::").map(str::to_string).collect() };
    // `super` of `a/b.rs` and of `a/b/mod.rs` (both module a::b) is `a`.
    let mut found = Vec::new();
    let mut index = 0;
    while index < tokens.len() {
        let after_separator = index > 0 && tokens[index - 1] == Token::PathSep;
        let start = match &tokens[index] {
            Token::Ident(name) if !after_separator && name == "crate" => Some(Vec::new()),
            Token::Ident(name) if !after_separator && name == "self" => Some(here.clone()),
            Token::Ident(name) if !after_separator && name == "super" => {
                Some(here[..here.len().saturating_sub(1)].to_vec())
            }
            Token::Ident(name) if !after_separator && children.contains(name) => {
                let mut path = here.clone();
                path.push(name.clone());
                Some(path)
            }
            _ => None,
        };
        let Some(prefix) = start else {
            index += 1;
            continue;
        };
        // A declaration (`mod x;`) is not an import, nor is a bare `self` receiver.
        let declared = index > 0 && tokens[index - 1] == Token::Ident("mod".into());
        if declared || tokens.get(index + 1) != Some(&Token::PathSep) {
            index += 1;
            continue;
        }
        let mut path = prefix;
        index = read_tree(tokens, index + 1, &mut path, &mut found);
    }
    found
}

/// Reads `::seg::seg…` or `::{tree, tree}` after a path, resolving `super` segments; pushes
/// every complete path; returns the index after it.
fn read_tree(tokens: &[Token], mut index: usize, path: &mut Vec<String>, found: &mut Vec<Vec<String>>) -> usize {
    while tokens.get(index) == Some(&Token::PathSep) {
        match tokens.get(index + 1) {
            Some(Token::Ident(name)) if name == "super" => {
                path.pop();
                index += 2;
            }
            Some(Token::Ident(name)) => {
                path.push(name.clone());
                index += 2;
            }
            Some(Token::Open) => {
                index += 2;
                loop {
                    match tokens.get(index) {
                        Some(Token::Close) => return index + 1,
                        Some(Token::Comma) => index += 1,
                        Some(Token::Ident(name)) => {
                            let mut branch = path.clone();
                            if name != "self" {
                                branch.push(name.clone());
                            }
                            index = read_tree(tokens, index + 1, &mut branch, found);
                            // `x as y`: skip the rename.
                            if tokens.get(index) == Some(&Token::Ident("as".into())) {
                                index += 2;
                            }
                        }
                        Some(Token::Other('*')) | Some(_) => index += 1,
                        None => return index,
                    }
                }
            }
            _ => break,
        }
    }
    found.push(path.clone());
    index
}

/// The module a path lands in: its longest prefix that is a module of the crate.
fn longest_module(path: &[String], modules: &BTreeSet<String>) -> Option<String> {
    (0..=path.len()).rev().map(|length| path[..length].join("::")).find(|candidate| modules.contains(candidate))
}

/// The circles of the graph, each as a closed walk `a -> b -> … -> a`: a shortest one through
/// each file that is on no walk reported yet.
fn circles(graph: &Graph) -> Vec<Vec<String>> {
    let mut reported: BTreeSet<String> = BTreeSet::new();
    let mut found = Vec::new();
    for start in graph.keys() {
        if reported.contains(start) {
            continue;
        }
        if let Some(mut walk) = walk_back(graph, start) {
            reported.extend(walk.iter().cloned());
            walk.push(start.clone());
            found.push(walk);
        }
    }
    found
}

/// A shortest walk from `start` back to itself, if there is one.
fn walk_back(graph: &Graph, start: &str) -> Option<Vec<String>> {
    let mut previous: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start.to_string()]);
    while let Some(module) = queue.pop_front() {
        for next in graph.get(&module).into_iter().flatten() {
            if next == start {
                let mut walk = vec![module.clone()];
                let mut at = module.clone();
                while let Some(before) = previous.get(&at) {
                    walk.push(before.clone());
                    at = before.clone();
                }
                walk.reverse();
                return Some(walk);
            }
            if !previous.contains_key(next) && next != start {
                previous.insert(next.clone(), module.clone());
                queue.push_back(next.clone());
            }
        }
    }
    None
}
