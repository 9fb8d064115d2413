#!/usr/bin/awk -f
# benchratio.awk: reads `go test -bench` output and prints, for every
# benchmark with sub-benchmarks, each sub-benchmark's median ns/op as a ratio
# to its sibling named "baseline..." or "...=baseline..." (run in the same
# invocation). Speed is reported this way, never as absolute timings.
function median(list,    n, a, i, j, t) {
	n = split(list, a, " ")
	for (i = 1; i <= n; i++)
		for (j = i + 1; j <= n; j++)
			if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
	return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
/^Benchmark[^ \t]*\/[^ \t]*[ \t]/ {
	name = $1
	sub(/-[0-9]+$/, "", name)
	for (i = 2; i <= NF; i++)
		if ($(i + 1) == "ns/op") { ns[name] = ns[name] " " $i; break }
	if (!(name in seen)) { seen[name] = 1; order[++count] = name }
}
END {
	for (k = 1; k <= count; k++) {
		name = order[k]; parent = name; sub(/\/.*/, "", parent)
		split(name, parts, "/")
		if (parts[2] ~ /(^|=)baseline/) base[parent] = median(ns[name])
	}
	printed = 0
	for (k = 1; k <= count; k++) {
		name = order[k]; parent = name; sub(/\/.*/, "", parent)
		if (!(parent in base) || base[parent] == 0) continue
		m = median(ns[name])
		printf "%-60s %12.1f ns/op  %6.2fx baseline\n", name, m, m / base[parent]
		printed++
	}
	if (!printed) print "benchratio: no benchmark with a baseline sibling found"
}
