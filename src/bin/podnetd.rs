fn main() {
    eprintln!(
        "podnetd: the node agent is not built yet; only `podnetctl lab` works in this version"
    );
    std::process::exit(1);
}
