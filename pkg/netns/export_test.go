package netns

// SetScanHook makes r call f in every refresh, after it has listed the
// processes and before it looks at them.
func SetScanHook(r *Resolver, f func()) {
	r.refreshMu.Lock()
	defer r.refreshMu.Unlock()
	r.scanHook = f
}
