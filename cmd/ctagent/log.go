package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"go.uber.org/zap"
	"go.uber.org/zap/buffer"
	"go.uber.org/zap/zapcore"
)

// Log levels and formats accepted by --log.level and --log.format.
var (
	logLevels  = []string{"debug", "info", "warn", "error"}
	logFormats = []string{"logfmt", "json"}
)

// newLogger builds the process logger. Both formats use the keys of the
// Prometheus exporters (ts, level, caller, msg), so log pipelines that parse
// node_exporter's output parse ours.
func newLogger(w io.Writer, level, format string) (*zap.Logger, error) {
	var lvl zapcore.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, err
	}
	ec := zapcore.EncoderConfig{
		TimeKey:        "ts",
		LevelKey:       "level",
		CallerKey:      "caller",
		MessageKey:     "msg",
		StacktraceKey:  "stacktrace",
		LineEnding:     zapcore.DefaultLineEnding,
		EncodeLevel:    zapcore.LowercaseLevelEncoder,
		EncodeTime:     zapcore.RFC3339NanoTimeEncoder,
		EncodeDuration: zapcore.StringDurationEncoder,
		EncodeCaller:   zapcore.ShortCallerEncoder,
	}
	var enc zapcore.Encoder
	switch format {
	case "json":
		enc = zapcore.NewJSONEncoder(ec)
	case "logfmt":
		enc = &logfmtEncoder{Encoder: zapcore.NewJSONEncoder(ec)}
	default:
		return nil, fmt.Errorf("unknown log format %q", format)
	}
	core := zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), lvl)
	return zap.New(core, zap.AddCaller(), zap.ErrorOutput(zapcore.Lock(zapcore.AddSync(w)))), nil
}

// logfmtEncoder renders zap entries as logfmt (key=value pairs, values quoted
// when needed). It lets the JSON encoder do the work and rewrites its output,
// which keeps field order and zap's encoding of every field type; nested
// objects and arrays become quoted JSON strings. Logging is rare enough in
// this daemon that the second pass does not matter.
type logfmtEncoder struct {
	zapcore.Encoder
}

var logfmtPool = buffer.NewPool()

func (e *logfmtEncoder) Clone() zapcore.Encoder {
	return &logfmtEncoder{Encoder: e.Encoder.Clone()}
}

func (e *logfmtEncoder) EncodeEntry(ent zapcore.Entry, fields []zapcore.Field) (*buffer.Buffer, error) {
	js, err := e.Encoder.EncodeEntry(ent, fields)
	if err != nil {
		return nil, err
	}
	defer js.Free()
	out := logfmtPool.Get()
	if err := jsonToLogfmt(out, js.Bytes()); err != nil {
		out.Free()
		return nil, err
	}
	out.AppendByte('\n')
	return out, nil
}

// jsonToLogfmt writes the members of one JSON object as logfmt pairs.
func jsonToLogfmt(out *buffer.Buffer, js []byte) error {
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return fmt.Errorf("logfmt: not a JSON object: %q", js)
	}
	type pair struct {
		key string
		raw json.RawMessage
	}
	var pairs []pair
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, _ := tok.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return err
		}
		if key == "ts" { // first, as in the logfmt of the Prometheus exporters
			pairs = append([]pair{{key, raw}}, pairs...)
		} else {
			pairs = append(pairs, pair{key, raw})
		}
	}
	for i, p := range pairs {
		if i > 0 {
			out.AppendByte(' ')
		}
		out.AppendString(logfmtKey(p.key))
		out.AppendByte('=')
		switch p.raw[0] {
		case '"':
			var s string
			if err := json.Unmarshal(p.raw, &s); err != nil {
				return err
			}
			out.AppendString(logfmtValue(s))
		case '[':
			var strs []string
			if json.Unmarshal(p.raw, &strs) == nil { // a list of strings: a,b,c
				out.AppendString(logfmtValue(strings.Join(strs, ",")))
				break
			}
			fallthrough
		case '{':
			var c bytes.Buffer
			if err := json.Compact(&c, p.raw); err != nil {
				return err
			}
			out.AppendString(logfmtValue(c.String()))
		default: // number, true, false, null
			out.Write(p.raw)
		}
	}
	return nil
}

func logfmtKey(k string) string {
	if k == "" {
		return "_"
	}
	return strings.Map(func(r rune) rune {
		if r <= ' ' || r == '=' || r == '"' || r == utf8.RuneError {
			return '_'
		}
		return r
	}, k)
}

func logfmtValue(s string) string {
	if s == "" {
		return `""`
	}
	for _, r := range s {
		if r <= ' ' || r == '=' || r == '"' || r == '\\' || r == utf8.RuneError || !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

// slogHandler sends the slog records of libraries (exporter-toolkit's web
// server) to zap.
type slogHandler struct {
	log    *zap.Logger
	prefix string // group prefix, "a.b."
}

func newSlogLogger(l *zap.Logger) *slog.Logger {
	return slog.New(&slogHandler{log: l.WithOptions(zap.WithCaller(false))})
}

func slogLevel(l slog.Level) zapcore.Level {
	switch {
	case l >= slog.LevelError:
		return zapcore.ErrorLevel
	case l >= slog.LevelWarn:
		return zapcore.WarnLevel
	case l >= slog.LevelInfo:
		return zapcore.InfoLevel
	}
	return zapcore.DebugLevel
}

func (h *slogHandler) Enabled(_ context.Context, l slog.Level) bool {
	return h.log.Core().Enabled(slogLevel(l))
}

func (h *slogHandler) Handle(_ context.Context, r slog.Record) error {
	ce := h.log.Check(slogLevel(r.Level), r.Message)
	if ce == nil {
		return nil
	}
	fields := make([]zap.Field, 0, r.NumAttrs())
	r.Attrs(func(a slog.Attr) bool {
		fields = appendAttr(fields, h.prefix, a)
		return true
	})
	ce.Write(fields...)
	return nil
}

func (h *slogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	var fields []zap.Field
	for _, a := range attrs {
		fields = appendAttr(fields, h.prefix, a)
	}
	return &slogHandler{log: h.log.With(fields...), prefix: h.prefix}
}

func (h *slogHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return &slogHandler{log: h.log, prefix: h.prefix + name + "."}
}

func appendAttr(fields []zap.Field, prefix string, a slog.Attr) []zap.Field {
	v := a.Value.Resolve()
	key := prefix + a.Key
	switch v.Kind() {
	case slog.KindGroup:
		p := prefix
		if a.Key != "" {
			p = key + "."
		}
		for _, g := range v.Group() {
			fields = appendAttr(fields, p, g)
		}
		return fields
	case slog.KindString:
		return append(fields, zap.String(key, v.String()))
	case slog.KindInt64:
		return append(fields, zap.Int64(key, v.Int64()))
	case slog.KindUint64:
		return append(fields, zap.Uint64(key, v.Uint64()))
	case slog.KindFloat64:
		return append(fields, zap.Float64(key, v.Float64()))
	case slog.KindBool:
		return append(fields, zap.Bool(key, v.Bool()))
	case slog.KindDuration:
		return append(fields, zap.Duration(key, v.Duration()))
	case slog.KindTime:
		return append(fields, zap.Time(key, v.Time()))
	}
	if err, ok := v.Any().(error); ok {
		return append(fields, zap.NamedError(key, err))
	}
	return append(fields, zap.Any(key, v.Any()))
}
