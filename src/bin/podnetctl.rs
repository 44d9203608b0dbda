fn main() {
    std::process::exit(podnet::ctl::main());
}
