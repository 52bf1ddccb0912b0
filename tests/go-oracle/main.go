// Command go-oracle builds llbgen's test recipes with BuildKit's own Go client (client/llb
// v0.32.2) and prints what that client marshals, so tests/test_go_parity.py can compare llbgen's
// bytes with Go's for any generated graph.
//
// Input: one recipe per line on stdin (the JSON of tests/graphs.py). Output: one line per recipe,
// the base64 of the deterministic pb.Definition (ops and metadata; no source map, which records
// Python lines on llbgen's side), or "error: ..." when the Go client refuses the graph. Every
// step is interpreted with the Go client's own API (llb.Image, Run with llb.Shlex, AddMount,
// llb.Copy with CopyInfo...), never by encoding ops by hand: the point is to learn what Go does.
package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/containerd/platforms"
	"github.com/google/shlex"
	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/solver/pb"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/protobuf/proto"
)

// LocalUniqueID is the local.unique attribute both sides are told to use.
const LocalUniqueID = "llbgen-parity"

type step struct {
	Kind string `json:"kind"`

	// sources
	Ref           string   `json:"ref"` // an image's reference, a git ref
	ResolveMode   *string  `json:"resolve_mode"`
	Local         string   `json:"local"`
	Include       []string `json:"include"`
	Exclude       []string `json:"exclude"`
	FollowPaths   []string `json:"follow_paths"`
	SharedKeyHint string   `json:"shared_key_hint"`
	URL           string   `json:"url"`
	Subdir        string   `json:"subdir"`
	KeepGitDir    bool     `json:"keep_git_dir"`
	Checksum      string   `json:"checksum"`
	Filename      string   `json:"filename"`
	UID           int      `json:"uid"`
	GID           int      `json:"gid"`
	Mode          int      `json:"mode"`

	// state values (a state step sets one; a run sets any of them for itself)
	Key      string      `json:"key"`
	Value    string      `json:"value"`
	Path     string      `json:"path"`
	Dir      *string     `json:"dir"`
	User     *string     `json:"user"`
	Hostname *string     `json:"hostname"`
	Network  *string     `json:"network"`
	Security *string     `json:"security"`
	Platform *string     `json:"platform"`
	Env      [][2]string `json:"env"`

	// run
	Cmd            json.RawMessage `json:"cmd"`
	ValidExitCodes *[]int          `json:"valid_exit_codes"`
	ReadonlyRootfs bool            `json:"readonly_rootfs"`
	Mounts         []mount         `json:"mounts"`
	Result         string          `json:"result"`

	// file
	Actions []action `json:"actions"`

	// merge, diff
	Inputs []int `json:"inputs"`
	Lower  int   `json:"lower"`
	Upper  int   `json:"upper"`

	// any step
	Name          *string        `json:"name"`
	IgnoreCache   bool           `json:"ignore_cache"`
	ProgressGroup *progressGroup `json:"progress_group"`
}

type progressGroup struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	Weak bool   `json:"weak"`
}

type mount struct {
	Type     string  `json:"type"`
	Target   *string `json:"target"`
	From     *int    `json:"from"`
	Path     string  `json:"path"`
	Readonly bool    `json:"readonly"`
	ID       string  `json:"id"`
	Sharing  string  `json:"sharing"`
	Size     int64   `json:"size"`
	Env      *string `json:"env"`
	UID      int     `json:"uid"`
	GID      int     `json:"gid"`
	Mode     int     `json:"mode"`
	Optional bool    `json:"optional"`
}

type action struct {
	Op                    string   `json:"op"`
	Path                  string   `json:"path"`
	Mode                  any      `json:"mode"`
	Parents               bool     `json:"parents"`
	Data                  string   `json:"data"`
	Owner                 any      `json:"owner"`
	Created               *int64   `json:"created"` // microseconds since the epoch
	AllowNotFound         bool     `json:"allow_not_found"`
	AllowWildcard         bool     `json:"allow_wildcard"`
	Target                string   `json:"target"`
	From                  int      `json:"from"`
	Src                   string   `json:"src"`
	Dest                  string   `json:"dest"`
	FollowSymlinks        bool     `json:"follow_symlinks"`
	ContentsOnly          bool     `json:"contents_only"`
	Unpack                bool     `json:"unpack"`
	CreateDestPath        bool     `json:"create_dest_path"`
	AllowEmptyWildcard    bool     `json:"allow_empty_wildcard"`
	Include               []string `json:"include"`
	Exclude               []string `json:"exclude"`
	AlwaysReplaceExisting bool     `json:"always_replace_existing"`
	RequiredPaths         []string `json:"required_paths"`
}

type history []llb.State

// at is the state k steps back from the newest (0 is the newest), clamped to the first.
func (h history) at(k int) llb.State {
	return h[max(0, len(h)-1-k)]
}

func parsePlatform(s string) ocispecs.Platform {
	p, err := platforms.Parse(s)
	if err != nil {
		panic(err)
	}
	return platforms.Normalize(p)
}

var networks = map[string]pb.NetMode{"sandbox": llb.NetModeSandbox, "host": llb.NetModeHost, "none": llb.NetModeNone}
var securities = map[string]pb.SecurityMode{"sandbox": llb.SecurityModeSandbox, "insecure": llb.SecurityModeInsecure}
var sharings = map[string]llb.CacheMountSharingMode{"shared": llb.CacheMountShared, "private": llb.CacheMountPrivate, "locked": llb.CacheMountLocked}
var resolveModes = map[string]llb.ResolveMode{"default": llb.ResolveModeDefault, "pull": llb.ResolveModeForcePull, "local": llb.ResolveModePreferLocal}

// constraints are the per-step options every op takes: custom name, ignore-cache, progress group.
func (s *step) constraints() []llb.ConstraintsOpt {
	var out []llb.ConstraintsOpt
	if s.Name != nil {
		out = append(out, llb.WithCustomName(*s.Name))
	}
	if s.IgnoreCache {
		out = append(out, llb.IgnoreCache)
	}
	if g := s.ProgressGroup; g != nil {
		out = append(out, llb.ProgressGroup(g.ID, g.Name, g.Weak))
	}
	return out
}

func owner(v any) llb.ChownOption {
	switch o := v.(type) {
	case nil:
		return nil
	case string:
		return llb.WithUser(o)
	case float64:
		return llb.WithUser(fmt.Sprint(int64(o)))
	case []any:
		u, uok := o[0].(float64)
		g, gok := o[1].(float64)
		if uok && gok {
			return llb.WithUIDGID(int(u), int(g))
		}
		return llb.WithUser(fmt.Sprintf("%v:%v", jsonScalar(o[0]), jsonScalar(o[1])))
	}
	panic(fmt.Sprintf("owner %v", v))
}

func jsonScalar(v any) string {
	if f, ok := v.(float64); ok {
		return fmt.Sprint(int64(f))
	}
	return v.(string)
}

func created(us *int64) *llb.CreatedTime {
	if us == nil {
		return nil
	}
	t := llb.WithCreatedTime(time.Unix(0, *us*1000))
	return &t
}

// withOwnerAndTime adds the options all actions but rm take (ChownOption and CreatedTime are
// options of each kind of action).
func withOwnerAndTime[T any](opts []T, chown llb.ChownOption, ts *llb.CreatedTime) []T {
	if chown != nil {
		opts = append(opts, any(chown).(T))
	}
	if ts != nil {
		opts = append(opts, any(*ts).(T))
	}
	return opts
}

// fileAction appends action a to chain (nil for the first: Go's chaining methods then start one).
func fileAction(h history, a action, chain *llb.FileAction) *llb.FileAction {
	chown := owner(a.Owner)
	ts := created(a.Created)
	switch a.Op {
	case "mkdir":
		opts := withOwnerAndTime([]llb.MkdirOption{llb.WithParents(a.Parents)}, chown, ts)
		return chain.Mkdir(a.Path, os.FileMode(int(a.Mode.(float64))), opts...)
	case "mkfile":
		opts := withOwnerAndTime([]llb.MkfileOption{}, chown, ts)
		return chain.Mkfile(a.Path, os.FileMode(int(a.Mode.(float64))), []byte(a.Data), opts...)
	case "rm":
		return chain.Rm(a.Path, llb.WithAllowNotFound(a.AllowNotFound), llb.WithAllowWildcard(a.AllowWildcard))
	case "symlink":
		return chain.Symlink(a.Target, a.Path, withOwnerAndTime([]llb.SymlinkOption{}, chown, ts)...)
	case "copy":
		opts := []llb.CopyOption{&llb.CopyInfo{
			FollowSymlinks:                 a.FollowSymlinks,
			CopyDirContentsOnly:            a.ContentsOnly,
			AttemptUnpack:                  a.Unpack,
			CreateDestPath:                 a.CreateDestPath,
			AllowWildcard:                  a.AllowWildcard,
			AllowEmptyWildcard:             a.AllowEmptyWildcard,
			IncludePatterns:                a.Include,
			ExcludePatterns:                a.Exclude,
			AlwaysReplaceExistingDestPaths: a.AlwaysReplaceExisting,
			RequiredPaths:                  a.RequiredPaths,
		}}
		switch m := a.Mode.(type) {
		case float64:
			opts = append(opts, llb.ChmodOpt{Mode: os.FileMode(int(m))})
		case string:
			opts = append(opts, llb.ChmodOpt{ModeStr: m})
		}
		return chain.Copy(h.at(a.From), a.Src, a.Dest, withOwnerAndTime(opts, chown, ts)...)
	}
	panic("unknown file action " + a.Op)
}

func run(h history, s *step) llb.State {
	cur := h.at(0)
	var ro []llb.RunOption
	var cmd any
	if err := json.Unmarshal(s.Cmd, &cmd); err != nil {
		panic(err)
	}
	switch c := cmd.(type) {
	case string:
		// llb.Shlex ignores google/shlex's error and runs the words before it; llbgen refuses
		// such a command where it is written (a deliberate difference), so report it here.
		if _, err := shlex.Split(c); err != nil {
			panic("llb.Shlex cannot split " + c + ": " + err.Error())
		}
		ro = append(ro, llb.Shlex(c))
	case []any:
		args := make([]string, len(c))
		for i, a := range c {
			args[i] = a.(string)
		}
		ro = append(ro, llb.Args(args))
	}
	for _, kv := range s.Env {
		ro = append(ro, llb.AddEnv(kv[0], kv[1]))
	}
	if s.Dir != nil {
		ro = append(ro, llb.Dir(*s.Dir))
	}
	if s.User != nil {
		ro = append(ro, llb.User(*s.User))
	}
	if s.Hostname != nil {
		ro = append(ro, llb.Hostname(*s.Hostname))
	}
	if s.Network != nil {
		ro = append(ro, llb.Network(networks[*s.Network]))
	}
	if s.Security != nil {
		ro = append(ro, llb.Security(securities[*s.Security]))
	}
	if s.Platform != nil {
		ro = append(ro, llb.Platform(parsePlatform(*s.Platform)))
	}
	if s.ValidExitCodes != nil {
		ro = append(ro, llb.ValidExitCodes(*s.ValidExitCodes...))
	}
	if s.ReadonlyRootfs {
		ro = append(ro, llb.ReadonlyRootFS())
	}
	for _, m := range s.Mounts {
		switch m.Type {
		case "bind":
			var opts []llb.MountOption
			if m.Path != "" {
				opts = append(opts, llb.SourcePath(m.Path))
			}
			if m.Readonly {
				opts = append(opts, llb.Readonly)
			}
			source := llb.Scratch()
			if m.From != nil {
				source = h.at(*m.From)
			}
			ro = append(ro, llb.AddMount(*m.Target, source, opts...))
		case "cache":
			source := llb.Scratch()
			if m.From != nil {
				source = h.at(*m.From)
			}
			ro = append(ro, llb.AddMount(*m.Target, source, llb.AsPersistentCacheDir(m.ID, sharings[m.Sharing])))
		case "tmpfs":
			ro = append(ro, llb.AddMount(*m.Target, llb.Scratch(), llb.Tmpfs(llb.TmpfsSize(m.Size))))
		case "secret":
			opts := []llb.SecretOption{llb.SecretFileOpt(m.UID, m.GID, m.Mode)}
			if m.Env != nil {
				opts = append(opts, llb.SecretAsEnvName(*m.Env))
			}
			if m.Optional {
				opts = append(opts, llb.SecretOptional)
			}
			target := m.Target
			if target == nil && m.Env == nil {
				dest := "/run/secrets/" + m.ID // llbgen's default, as the Dockerfile frontend's
				target = &dest
			}
			ro = append(ro, llb.AddSecretWithDest(m.ID, target, opts...))
		case "ssh":
			target := ""
			if m.Target != nil {
				target = *m.Target
			}
			opts := []llb.SSHOption{llb.SSHID(m.ID), llb.SSHSocketOpt(target, m.UID, m.GID, m.Mode)}
			if m.Optional {
				opts = append(opts, llb.SSHOptional)
			}
			ro = append(ro, llb.AddSSHSocket(opts...))
		default:
			panic("unknown mount " + m.Type)
		}
	}
	for _, c := range s.constraints() {
		ro = append(ro, c)
	}
	es := cur.Run(ro...)
	if s.Result == "root" {
		return es.Root()
	}
	return es.GetMount(s.Result)
}

func apply(h history, s *step) llb.State {
	cur := h.at(0)
	switch s.Kind {
	case "image":
		var opts []llb.ImageOption
		if s.Platform != nil {
			opts = append(opts, llb.Platform(parsePlatform(*s.Platform)))
		}
		if s.ResolveMode != nil {
			opts = append(opts, resolveModes[*s.ResolveMode])
		}
		for _, c := range s.constraints() {
			opts = append(opts, c)
		}
		return llb.Image(s.Ref, opts...)
	case "local":
		opts := []llb.LocalOption{
			llb.IncludePatterns(s.Include), llb.ExcludePatterns(s.Exclude),
			llb.FollowPaths(s.FollowPaths), llb.SharedKeyHint(s.SharedKeyHint),
		}
		if s.Name != nil {
			opts = append(opts, llb.WithCustomName(*s.Name))
		}
		return llb.Local(s.Local, opts...)
	case "http":
		var opts []llb.HTTPOption
		if s.Checksum != "" {
			opts = append(opts, llb.Checksum(digest.Digest(s.Checksum)))
		}
		if s.Filename != "" {
			opts = append(opts, llb.Filename(s.Filename))
		}
		if s.Mode != 0 {
			opts = append(opts, llb.Chmod(os.FileMode(s.Mode)))
		}
		if s.UID != 0 || s.GID != 0 {
			opts = append(opts, llb.Chown(s.UID, s.GID))
		}
		return llb.HTTP(s.URL, opts...)
	case "git":
		var opts []llb.GitOption
		if s.KeepGitDir {
			opts = append(opts, llb.KeepGitDir())
		}
		if s.Checksum != "" {
			opts = append(opts, llb.GitChecksum(s.Checksum))
		}
		fragment := s.Ref
		if s.Subdir != "" {
			fragment += ":" + s.Subdir
		}
		return llb.Git(s.URL, fragment, opts...)
	case "scratch":
		return llb.Scratch()
	case "env":
		return cur.AddEnv(s.Key, s.Value)
	case "dir":
		return cur.Dir(s.Path)
	case "user":
		return cur.User(*s.User)
	case "hostname":
		return cur.Hostname(*s.Hostname)
	case "network":
		return cur.Network(networks[*s.Network])
	case "security":
		return cur.Security(securities[*s.Security])
	case "platform":
		return cur.Platform(parsePlatform(*s.Platform))
	case "run":
		return run(h, s)
	case "file":
		var chain *llb.FileAction
		for _, a := range s.Actions {
			chain = fileAction(h, a, chain)
		}
		return cur.File(chain, s.constraints()...)
	case "merge":
		inputs := make([]llb.State, len(s.Inputs))
		for i, k := range s.Inputs {
			inputs[i] = h.at(k)
		}
		return llb.Merge(inputs, s.constraints()...)
	case "diff":
		return llb.Diff(h.at(s.Lower), h.at(s.Upper), s.constraints()...)
	}
	panic("unknown step " + s.Kind)
}

// definition builds one recipe, merges every state it made (so that every step is marshalled)
// and returns its marshalled pb.Definition without the source map.
func definition(line []byte) (out []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	var recipe []step
	if err := json.Unmarshal(line, &recipe); err != nil {
		return nil, err
	}
	h := history{llb.Image("docker.io/library/debian:bookworm@sha256:" + base)}
	for i := range recipe {
		h = append(h, apply(h, &recipe[i]))
	}
	def, err := llb.Merge(h).Marshal(context.Background(),
		llb.Platform(ocispecs.Platform{OS: "linux", Architecture: "amd64"}), llb.LocalUniqueID(LocalUniqueID))
	if err != nil {
		return nil, err
	}
	msg := def.ToPB()
	msg.Source = nil
	return proto.MarshalOptions{Deterministic: true}.Marshal(msg)
}

// base is the digest of the image every recipe starts from (tests/graphs.py DEB).
const base = "abababababababababababababababababababababababababababababababab"

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<26)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for in.Scan() {
		dt, err := definition(in.Bytes())
		if err != nil {
			msg, _ := json.Marshal(err.Error())
			fmt.Fprintf(out, "error: %s\n", msg)
		} else {
			fmt.Fprintln(out, base64.StdEncoding.EncodeToString(dt))
		}
		out.Flush() // the test waits for each answer before sending the next recipe
	}
	if err := in.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "go-oracle:", err)
		os.Exit(1)
	}
}
