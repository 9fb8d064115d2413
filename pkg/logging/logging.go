// Package logging builds ctagent's logger: zap, in the format of the
// Prometheus exporters (keys ts, level, caller, msg; logfmt or JSON), so
// that log pipelines that parse node_exporter's output parse ctagent's, and
// gives the libraries that log with slog (exporter-toolkit's web server)
// the same output.
package logging

import (
	"io"
	"log/slog"
	"math"

	zaplogfmt "github.com/jsternberg/zap-logfmt"
	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"
	"go.uber.org/zap/zapcore"
)

// Levels and Formats are the values New accepts, for flags.
var (
	Levels  = []string{"debug", "info", "warn", "error"}
	Formats = []string{"logfmt", "json"}
)

// New builds a logger that writes to w messages of level and above, in
// format "logfmt" or "json". logfmt is github.com/jsternberg/zap-logfmt:
// zap's console encoder writes tab-separated columns and the fields as one
// JSON object, which logfmt parsers cannot read. zap-logfmt writes lists as
// a,b and cannot write nested objects (zap then logs a "<key>Error" field);
// ctagent logs none.
func New(w io.Writer, level, format string) (*zap.Logger, error) {
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

// Slog gives the libraries that log with slog the core of l, without stack
// traces, like l itself.
func Slog(l *zap.Logger) *slog.Logger {
	return slog.New(zapslog.NewHandler(l.Core(), zapslog.AddStacktraceAt(math.MaxInt)))
}
