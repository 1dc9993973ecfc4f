//! The crate's modules in layers, lowest first. A module imports only modules of lower layers, so
//! no two modules depend on each other and the crate reads bottom-up: pure pieces first, then the
//! clients of the outside systems, then the steps and loops built of them, and `app` on top. The
//! test below holds every `crate::` path in `src/` to it, and fails for a new module until it is
//! given a layer here.

const LAYERS: &[&[&str]] = &[
    // Pure, or shared state without dependencies.
    &["scan", "ids"],
    &["transform", "fence", "retry", "shutdown", "status"],
    &["filter"],
    &["metrics"],
    // The outside systems: AWS request counting, Nakadi, DynamoDB Streams.
    &["aws_requests", "nakadi", "stream"],
    // Publish, dead-letter, report the done prefix: generic over where letters go, so the DLQ's
    // re-drain loop uses it too.
    &["delivery"],
    // A table's routes: which event type each record goes to, and a publisher per route.
    &["route"],
    &["config", "dlq"],
    &["telemetry", "lease", "event_type"],
    // One shard's loop; the HTTP endpoints.
    &["shard", "http"],
    &["coordinator", "startup"],
    &["snapshot", "admin", "check"],
    &["app"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    use super::*;

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The top-level modules a file's code (not its comments) names as `crate::<module>`.
    fn imports(text: &str) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            let mut rest = code;
            while let Some(at) = rest.find("crate::") {
                rest = &rest[at + "crate::".len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        }
        found
    }

    #[test]
    fn no_module_imports_one_above_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut wrong = Vec::new();
        for file in files {
            let relative = file.strip_prefix(&src).unwrap();
            let top = relative.components().next().unwrap().as_os_str();
            let module = top.to_str().unwrap().trim_end_matches(".rs");
            if matches!(module, "lib" | "main" | "layers") {
                continue;
            }
            let Some(own) = layer_of(module) else {
                wrong.push(format!("{module} has no layer in LAYERS"));
                continue;
            };
            for import in imports(&std::fs::read_to_string(&file).unwrap()) {
                if import == module {
                    continue;
                }
                match layer_of(&import) {
                    Some(layer) if layer < own => {}
                    _ => wrong.push(format!(
                        "{} imports crate::{import}, which is not below {module}",
                        relative.display()
                    )),
                }
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn the_scan_finds_imports_in_code_only() {
        let text = "use crate::lease::{A, B};\n// crate::app in a comment\nlet x = crate::metrics::M; // crate::http\n";
        let found: Vec<_> = imports(text).into_iter().collect();
        assert_eq!(found, ["lease", "metrics"]);
    }
}
