package main

import (
	"io"
	"log/slog"
	"math"

	zaplogfmt "github.com/jsternberg/zap-logfmt"
	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"
	"go.uber.org/zap/zapcore"
)

// newLogger builds the process logger. Both formats use the keys of the
// Prometheus exporters (ts, level, caller, msg), so log pipelines that parse
// node_exporter's output parse ours. logfmt is github.com/jsternberg/zap-logfmt:
// zap's console encoder writes tab-separated columns and the fields as one
// JSON object, which logfmt parsers cannot read. zap-logfmt writes lists as
// a,b and cannot write nested objects (zap then logs a "<key>Error" field);
// ctagent logs none.
func newLogger(w io.Writer, level, format string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
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
	enc := zaplogfmt.NewEncoder(ec)
	if format == "json" {
		enc = zapcore.NewJSONEncoder(ec)
	}
	ws := zapcore.Lock(zapcore.AddSync(w))
	return zap.New(zapcore.NewCore(enc, ws, lvl), zap.AddCaller(), zap.ErrorOutput(ws)), nil
}

// newSlogLogger gives the libraries that log with slog (exporter-toolkit's
// web server) the core of l, without stack traces, like l itself.
func newSlogLogger(l *zap.Logger) *slog.Logger {
	return slog.New(zapslog.NewHandler(l.Core(), zapslog.AddStacktraceAt(math.MaxInt)))
}
