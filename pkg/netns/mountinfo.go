package netns

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// mount is one line of /proc/PID/mountinfo, see proc_pid_mountinfo(5):
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
type mount struct {
	id, parent   int
	major, minor uint32
	root         string // for nsfs: "net:[4026532281]"
	mountPoint   string
	options      string
	optional     []string
	fsType       string
	source       string
	superOptions string
}

// parseMountinfo parses the content of a mountinfo file.
func parseMountinfo(r io.Reader) ([]mount, error) {
	var mounts []mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		if sc.Text() == "" {
			continue
		}
		m, err := parseMountinfoLine(sc.Text())
		if err != nil {
			return nil, fmt.Errorf("mountinfo line %d: %w", n, err)
		}
		mounts = append(mounts, m)
	}
	return mounts, sc.Err()
}

func parseMountinfoLine(line string) (mount, error) {
	var m mount
	fields := strings.Split(line, " ")
	if len(fields) < 7 {
		return m, fmt.Errorf("%d fields, want at least 7", len(fields))
	}
	var err error
	if m.id, err = strconv.Atoi(fields[0]); err != nil {
		return m, fmt.Errorf("mount ID: %w", err)
	}
	if m.parent, err = strconv.Atoi(fields[1]); err != nil {
		return m, fmt.Errorf("parent ID: %w", err)
	}
	maj, min, ok := strings.Cut(fields[2], ":")
	if !ok {
		return m, fmt.Errorf("device %q: want major:minor", fields[2])
	}
	major, err := strconv.ParseUint(maj, 10, 32)
	if err != nil {
		return m, fmt.Errorf("device major: %w", err)
	}
	minor, err := strconv.ParseUint(min, 10, 32)
	if err != nil {
		return m, fmt.Errorf("device minor: %w", err)
	}
	m.major, m.minor = uint32(major), uint32(minor)
	m.root = unescapeOctal(fields[3])
	m.mountPoint = unescapeOctal(fields[4])
	m.options = fields[5]
	i := 6
	for ; i < len(fields) && fields[i] != "-"; i++ {
		m.optional = append(m.optional, fields[i])
	}
	if i+1 >= len(fields) {
		return m, errors.New(`no "-" separator followed by a filesystem type`)
	}
	m.fsType = unescapeOctal(fields[i+1])
	if i+2 < len(fields) {
		m.source = unescapeOctal(fields[i+2])
	}
	if i+3 < len(fields) {
		m.superOptions = fields[i+3]
	}
	return m, nil
}

// unescapeOctal undoes the kernel's escaping of space, tab, newline and
// backslash as \040, \011, \012 and \134 in mountinfo paths.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) && '0' <= s[i+1] && s[i+1] <= '3' && isOctal(s[i+2]) && isOctal(s[i+3]) {
			v := (s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0')
			b.WriteByte(v)
			i += 3
			continue
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func isOctal(ch byte) bool { return '0' <= ch && ch <= '7' }

// netNsInode returns the inode of a network namespace bind mount: nsfs with
// root "net:[<inode>]".
func (m mount) netNsInode() (uint32, bool) {
	if m.fsType != "nsfs" {
		return 0, false
	}
	s, ok := strings.CutPrefix(m.root, "net:[")
	if !ok {
		return 0, false
	}
	s, ok = strings.CutSuffix(s, "]")
	if !ok {
		return 0, false
	}
	ino, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return 0, false
	}
	return uint32(ino), true
}
