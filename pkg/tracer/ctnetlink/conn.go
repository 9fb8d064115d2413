package ctnetlink

// A minimal NETLINK_NETFILTER socket opened inside a network namespace:
// requests with sequence checks, streamed dump replies (no whole-table
// buffering) and multicast receive with ENOBUFS reporting.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/mdlayher/socket"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ctagent/ctagent/pkg/tracer"
)

// nlRecvBufSize is large enough for any datagram ctnetlink sends: dump
// skbs are capped at 32 KiB by netlink_recvmsg, events are a few hundred bytes.
const nlRecvBufSize = 64 << 10

// bufPool holds the receive buffers of all Conns. A Conn takes one only
// while a datagram is being read or used (between Receive and the next
// Receive, or during a request), so an idle listener holds none: with a
// buffer of its own per socket, 1,000 namespaces (two sockets each) kept
// 128 MiB resident for nothing.
var bufPool = sync.Pool{New: func() any { return new([nlRecvBufSize]byte) }}

// nlQueryTimeout bounds every request/reply exchange.
const nlQueryTimeout = 10 * time.Second

// ErrTruncated means a datagram did not fit the receive buffer.
var ErrTruncated = errors.New("netlink datagram truncated")

// Conn is a NETLINK_NETFILTER socket. Requests (query) must not run
// concurrently on one socket; receive may run while another goroutine
// calls close.
type Conn struct {
	c   *socket.Conn
	rc  syscall.RawConn
	seq uint32
	buf *[nlRecvBufSize]byte // from bufPool while held, else nil
}

// Dial opens a NETLINK_NETFILTER socket in ns (Path "" = the
// namespace of the calling thread, which is the process's own unless the
// caller locked its thread into another). The calling thread's namespace is
// never changed: the socket is created on a separate, locked thread.
func Dial(ns tracer.Namespace) (*Conn, error) {
	cfg := &socket.Config{}
	if ns.Path != "" {
		h, err := netns.GetFromPath(ns.Path)
		if err != nil {
			return nil, fmt.Errorf("open network namespace %s: %w", ns.Path, err)
		}
		defer h.Close()
		if ns.Inode != 0 {
			var st unix.Stat_t
			if err := unix.Fstat(int(h), &st); err != nil {
				return nil, fmt.Errorf("stat network namespace %s: %w", ns.Path, err)
			}
			if uint32(st.Ino) != ns.Inode {
				return nil, fmt.Errorf("network namespace %s is inode %d, want %d", ns.Path, st.Ino, ns.Inode)
			}
		}
		cfg.NetNS = int(h)
	}
	c, err := socket.Socket(unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_NETFILTER, "netlink", cfg)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := c.Bind(&unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		c.Close()
		return nil, fmt.Errorf("netlink bind: %w", err)
	}
	rc, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, err
	}
	return &Conn{c: c, rc: rc}, nil
}

// Close closes the socket; a Receive blocked on another goroutine returns
// with an error.
func (s *Conn) Close() error { return s.c.Close() }

// Release returns the receive buffer to the pool: the data Receive
// returned last is no longer valid. Receive and requests call it first;
// a caller done with a datagram may call it to give the buffer back
// before its next Receive. Not safe concurrently with Receive.
func (s *Conn) Release() {
	if s.buf != nil {
		bufPool.Put(s.buf)
		s.buf = nil
	}
}

// joinGroups subscribes the socket to ctnetlink multicast groups.
func (s *Conn) JoinGroups(groups ...int) error {
	for _, g := range groups {
		if err := s.c.SetsockoptInt(unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, g); err != nil {
			return fmt.Errorf("join netlink group %d: %w", g, err)
		}
	}
	return nil
}

// setReadBuffer sets SO_RCVBUFFORCE (root), else SO_RCVBUF (capped by
// net.core.rmem_max), and returns the size the kernel reports.
func (s *Conn) SetReadBuffer(n int) (int, error) {
	if err := s.c.SetReadBuffer(n); err != nil {
		return 0, fmt.Errorf("set netlink receive buffer to %d: %w", n, err)
	}
	return s.c.ReadBuffer()
}

// Receive reads one datagram, into a buffer taken from the pool only
// once the socket is readable (so a goroutine waiting here holds none);
// the result is valid until the next Receive or Release. The error is the
// poller's (closed, deadline) or the syscall's (e.g. ENOBUFS).
func (s *Conn) Receive() ([]byte, error) {
	s.Release()
	var (
		n, rflags int
		serr      error
	)
	err := s.rc.Read(func(fd uintptr) bool {
		if s.buf == nil {
			s.buf = bufPool.Get().(*[nlRecvBufSize]byte)
		}
		n, _, rflags, _, serr = unix.Recvmsg(int(fd), s.buf[:], nil, unix.MSG_DONTWAIT)
		if serr == unix.EAGAIN {
			s.Release() // waits for readiness without a buffer
		}
		return serr != unix.EAGAIN && serr != unix.EINTR
	})
	if err != nil {
		s.Release()
		return nil, err
	}
	if serr != nil {
		s.Release()
		return nil, serr
	}
	if rflags&unix.MSG_TRUNC != 0 {
		return nil, ErrTruncated
	}
	return s.buf[:n], nil
}

// query sends one ctnetlink request and calls fn for every data message of
// the reply. Dump requests end at NLMSG_DONE; others are sent with
// NLM_F_ACK and end at the acknowledgement. Messages of earlier,
// abandoned requests are skipped by sequence number. An error from fn is
// recorded and returned after the reply has been read completely.
func (s *Conn) query(msgType uint8, family uint8, flags uint16, attrs []byte, fn func(Message) error) error {
	s.seq++
	if s.seq == 0 {
		s.seq = 1
	}
	dump := flags&unix.NLM_F_DUMP == unix.NLM_F_DUMP
	flags |= unix.NLM_F_REQUEST
	if !dump {
		flags |= unix.NLM_F_ACK
	}
	req := make([]byte, nlmsgHdrLen+nfgenLen, nlmsgHdrLen+nfgenLen+len(attrs))
	req = append(req, attrs...)
	binary.NativeEndian.PutUint32(req[0:4], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:6], nfnlSubsysCTNetlink<<8|uint16(msgType))
	binary.NativeEndian.PutUint16(req[6:8], flags)
	binary.NativeEndian.PutUint32(req[8:12], s.seq)
	req[nlmsgHdrLen] = family // nfgenmsg: family, version 0, res_id 0

	if err := s.c.SetReadDeadline(time.Now().Add(nlQueryTimeout)); err != nil {
		return err
	}
	defer s.c.SetReadDeadline(time.Time{})
	defer s.Release()
	if err := s.c.Sendto(context.Background(), req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	var fnErr error
	for {
		b, err := s.Receive()
		if err != nil {
			return fmt.Errorf("netlink receive: %w", err)
		}
		msgs, perr := SplitMessages(b)
		for _, m := range msgs {
			if m.Seq != s.seq {
				continue
			}
			switch m.Type {
			case unix.NLMSG_NOOP:
				continue
			case unix.NLMSG_ERROR, unix.NLMSG_DONE:
				if errno := nlErrno(m.Data); errno != 0 {
					return errno
				}
				if m.Type == unix.NLMSG_DONE || !dump {
					return fnErr
				}
				continue
			case unix.NLMSG_OVERRUN:
				return fmt.Errorf("netlink overrun")
			}
			if err := fn(m); err != nil && fnErr == nil {
				fnErr = err
			}
		}
		if perr != nil {
			return fmt.Errorf("netlink reply: %w", perr)
		}
	}
}

// nlErrno returns the error of an NLMSG_ERROR or NLMSG_DONE payload (a
// negative errno, 0 for an acknowledgement).
func nlErrno(data []byte) syscall.Errno {
	if len(data) < 4 {
		return 0
	}
	if e := int32(binary.NativeEndian.Uint32(data[:4])); e < 0 {
		return syscall.Errno(-e)
	}
	return 0
}
