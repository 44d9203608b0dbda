fn main() {
    eprintln!(
        "podnet: the CNI plugin is not built yet; only `podnetctl lab` works in this version"
    );
    std::process::exit(1);
}
