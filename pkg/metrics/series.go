package metrics

import (
	"cmp"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/ctagent/ctagent/pkg/tracer"
)

// The per-namespace series share their namespace's label pairs. A const
// metric of client_golang makes a label pair, and copies of the name and
// the value, for every label of every series (MakeLabelPairs): at 1,000
// namespaces with the identity labels, half of what a scrape allocated.
// Here the pairs of the netns and identity labels are made once per
// namespace and scrape, and only the further labels (family, protocol,
// reason, state) once per series. The lifetime histograms share one slice
// of bucket bounds.

// labelLayout is how the label pairs of one metric's series are ordered:
// by label name, as client_golang orders them (and the text format prints
// them).
type labelLayout struct {
	names []string // the descriptor's variable labels, in its order
	// sorted holds indexes into names, in the order of the names.
	sorted []int
}

func newLabelLayout(names []string) labelLayout {
	sorted := make([]int, len(names))
	for i := range sorted {
		sorted[i] = i
	}
	slices.SortStableFunc(sorted, func(a, b int) int { return cmp.Compare(names[a], names[b]) })
	return labelLayout{names: names, sorted: sorted}
}

// nsLabels are the label pairs of one namespace's netns and identity
// labels, the first labels of every per-namespace metric.
type nsLabels struct {
	pairs []*dto.LabelPair // in the descriptors' order
	// only is pairs ordered by name: the labels of the metrics that
	// have no further labels, shared by their series.
	only []*dto.LabelPair
}

// newNSLabels makes the pairs of values, the netns and identity label
// values in the order of layout, the layout of the metrics with only these
// labels.
func newNSLabels(layout labelLayout, values []string) nsLabels {
	l := nsLabels{pairs: make([]*dto.LabelPair, len(values))}
	for i := range values {
		l.pairs[i] = &dto.LabelPair{Name: &layout.names[i], Value: &values[i]}
	}
	l.only = l.ordered(layout, nil)
	return l
}

// ordered returns the label pairs of one series of a metric with layout:
// the namespace's, then extra (values of the further labels), ordered by
// name.
func (l nsLabels) ordered(layout labelLayout, extra []string) []*dto.LabelPair {
	if l.only != nil && len(layout.sorted) == len(l.pairs) {
		return l.only
	}
	out := make([]*dto.LabelPair, len(layout.sorted))
	for k, i := range layout.sorted {
		if i < len(l.pairs) {
			out[k] = l.pairs[i]
		} else {
			out[k] = &dto.LabelPair{Name: &layout.names[i], Value: &extra[i-len(l.pairs)]}
		}
	}
	return out
}

// seriesMetric is one counter or gauge sample with label pairs made
// beforehand; what prometheus.NewConstMetric checks (the number of label
// values, valid UTF-8) holds by construction: identityValues makes the
// values valid.
type seriesMetric struct {
	desc    *prometheus.Desc
	labels  []*dto.LabelPair
	value   float64
	counter bool
}

func (m *seriesMetric) Desc() *prometheus.Desc { return m.desc }

func (m *seriesMetric) Write(out *dto.Metric) error {
	out.Label = m.labels
	if m.counter {
		out.Counter = &dto.Counter{Value: &m.value}
	} else {
		out.Gauge = &dto.Gauge{Value: &m.value}
	}
	return nil
}

// lifetimeBounds are the upper bounds of the lifetime buckets but the
// last, unbounded one (the +Inf bucket is the sample count), shared by
// every histogram.
var lifetimeBounds = func() []float64 {
	b := make([]float64, tracer.NumLifetimeBuckets-1)
	for i := range b {
		b[i] = tracer.LifetimeBucketBound(i)
	}
	return b
}()

// lifetimeMetric is one namespace's lifetime histogram of a family and
// protocol, the tracer's buckets (not cumulative, the last unbounded) made
// cumulative. prometheus.NewConstHistogram would take them as a map and
// make a bucket, a count and a bound for each, every series, every scrape.
type lifetimeMetric struct {
	desc       *prometheus.Desc
	labels     []*dto.LabelPair
	count      uint64
	sum        float64
	cumulative [tracer.NumLifetimeBuckets - 1]uint64
}

func newLifetimeMetric(desc *prometheus.Desc, labels []*dto.LabelPair, v *tracer.Values) *lifetimeMetric {
	m := &lifetimeMetric{desc: desc, labels: labels, sum: v.LifetimeSum.Seconds()}
	for i := range m.cumulative {
		m.count += v.LifetimeBuckets[i]
		m.cumulative[i] = m.count
	}
	m.count += v.LifetimeBuckets[tracer.NumLifetimeBuckets-1]
	return m
}

func (m *lifetimeMetric) Desc() *prometheus.Desc { return m.desc }

func (m *lifetimeMetric) Write(out *dto.Metric) error {
	buckets := make([]dto.Bucket, len(m.cumulative))
	ptrs := make([]*dto.Bucket, len(m.cumulative))
	for i := range buckets {
		b := &buckets[i]
		b.CumulativeCount, b.UpperBound = &m.cumulative[i], &lifetimeBounds[i]
		ptrs[i] = b
	}
	out.Histogram = &dto.Histogram{SampleCount: &m.count, SampleSum: &m.sum, Bucket: ptrs}
	out.Label = m.labels
	return nil
}
