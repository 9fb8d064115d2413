package ebpftracer

//go:generate go tool bpf2go -cc $BPF_CLANG -strip $BPF_STRIP -cflags $BPF_CFLAGS -target amd64,arm64 -type ct_event -type ct_tuple -type ct_counter_key -type ct_counter_value -type ct_event_type -type ct_fail_reason -type ct_lost_reason -type ct_event_flag conntrack ../../../bpf/conntrack.bpf.c -- -I../../../bpf -I../../../bpf/headers/libbpf
