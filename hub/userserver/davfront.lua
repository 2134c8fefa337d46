-- The WebDAV front's rules, run by nginx (ngx_http_lua) for one user's endpoint: which
-- requests nginx answers itself (a plain GET, HEAD or PUT of a local adaptor's file), the
-- token check for those, the ETag they carry, and the write feed of what they wrote.
-- Everything else goes to the endpoint (wsgidav) unchanged. See davfront.py for the rules.
local ffi = require "ffi"

-- x86-64 Linux's struct stat (davfront.py's find_nginx offers the front on that machine alone)
ffi.cdef [[
  struct skerry_timespec { long tv_sec; long tv_nsec; };
  struct skerry_stat {
    unsigned long st_dev; unsigned long st_ino; unsigned long st_nlink;
    unsigned int st_mode; unsigned int st_uid; unsigned int st_gid; int pad0;
    unsigned long st_rdev; long st_size; long st_blksize; long st_blocks;
    struct skerry_timespec st_atim; struct skerry_timespec st_mtim; struct skerry_timespec st_ctim;
    long reserved[3];
  };
  int lstat(const char *path, struct skerry_stat *buf);
  char *realpath(const char *path, char *resolved);
  void free(void *ptr);
  long write(int fd, const void *buf, unsigned long count);
  int access(const char *path, int mode);
  int open(const char *path, int flags, int mode);
  int close(int fd);
]]

local S_IFMT, S_IFREG = 0xF000, 0x8000
local W_OK_X_OK, R_OK = 3, 4
local st = ffi.new("struct skerry_stat")

local M = {}
-- set by M.setup (davfront.py, render): {mount, flag, lost, feed, heard, cache_seconds, types,
-- adaptors = {name = {root, real, writable}}}
local settings
local tokens, token_count = {}, 0  -- Authorization header -> time its check ends

function M.setup(given)
  settings = given
  local special = {}
  for _, ext in ipairs(given.types.special) do
    special[ext] = true
  end
  settings.special = special
end

-- The file's (size, mtime) as the endpoint sees it: mtime a double of seconds, as Python's
-- os.stat_result.st_mtime computes it (sec + nsec * 1e-9), or nil, "missing" or "other".
local function look(path)
  if ffi.C.lstat(path, st) ~= 0 then
    return nil, "missing"
  end
  if bit.band(st.st_mode, S_IFMT) ~= S_IFREG then
    return nil, "other"
  end
  return tonumber(st.st_size), tonumber(st.st_mtim.tv_sec) + tonumber(st.st_mtim.tv_nsec) * 1e-9
end

-- skerry's ETag (adaptors/davprovider.py, etag_of): "<size hex>-<mtime in us, rounded half to even, hex>"
local function etag(size, mtime)
  local us = mtime * 1e6
  local whole = math.floor(us)
  local part = us - whole
  if part > 0.5 or (part == 0.5 and whole % 2 == 1) then
    whole = whole + 1
  end
  return string.format('"%x-%x"', size, whole)
end
M.etag = etag

local function inside(root, path)
  local buf = ffi.C.realpath(path, nil)
  if buf == nil then
    return false
  end
  local real = ffi.string(buf)
  ffi.C.free(buf)
  return real == root or real:sub(1, #root + 1) == root .. "/"
end

-- headers whose rules are the endpoint's (conditions, ranges, encodings, a client's mtime;
-- for PUT also Date, which nginx would take as the file's time, and a body of unknown length)
local FOR_ENDPOINT = {"if-match", "if-none-match", "if-modified-since", "if-unmodified-since", "if", "range",
                      "if-range", "content-encoding", "content-range", "x-oc-mtime"}

local function plain(method, headers)
  for _, name in ipairs(FOR_ENDPOINT) do
    if headers[name] ~= nil then
      return false
    end
  end
  if method == "PUT" then
    return headers["date"] == nil and headers["transfer-encoding"] == nil and headers["content-length"] ~= nil
  end
  return true
end

-- the request's path as sent: no dot segment, encoded slash, dot or backslash, no temporary
-- name; its last segment a name whose MIME type the extension alone gives (M.content_type)
local function clean(raw, uri)
  local path = raw:match("^[^?]*"):lower()
  if path:find("%2f", 1, true) or path:find("%2e", 1, true) or path:find("%5c", 1, true)
      or path:find("\\", 1, true) or path:find("/%.%.?/") or path:find("/%.%.?$") then
    return false
  end
  local name = uri:match("[^/]*$")
  return not (uri:find(".skerry-part", 1, true) or name:sub(1, 1) == "." or name:find(":", 1, true)
              or settings.special[(name:match("%.[^.]*$") or ""):lower()])
end

-- the MIME type the endpoint gives a file named ``name`` (wsgidav's guess: by its extension,
-- exact, else in lower case; names clean() lets through only)
local function content_type(name)
  local ext = name:match("%.[^.]*$")
  local types = settings.types
  return ext and (types.exact[ext] or types.folded[ext:lower()]) or types.default
end

-- whether a yes for this Authorization may be kept: a hub token's (the endpoint keeps those
-- too), never a JWT's (the endpoint checks a JWT, its expiry and its key, at every request;
-- hub tokens hold no dot, a JWT two)
local function keepable(authorization)
  local scheme, value = authorization:match("^%s*(%S+)%s+(.-)%s*$")
  if not scheme then
    return false
  end
  if scheme:lower() == "basic" then
    value = ngx.decode_base64(value) or "."
  end
  return not value:find(".", 1, true)
end

-- whether the hub says this Authorization may use the endpoint: asked of the endpoint itself
-- (HEAD of its root, with the same header), its yes for a hub token kept for cache_seconds as
-- the endpoint keeps it
local function admitted(authorization)
  local now = ngx.now()
  local until_ = tokens[authorization]
  if until_ and until_ > now then
    return true
  end
  local answer = ngx.location.capture("/_skerry_token_check", {method = ngx.HTTP_HEAD})
  if answer.status < 200 or answer.status > 299 then
    return false
  end
  if not keepable(authorization) then
    return true
  end
  if token_count > 1000 then  -- bounded: a stranger's flood of tokens cannot grow it
    tokens, token_count = {}, 0
  end
  if not tokens[authorization] then
    token_count = token_count + 1
  end
  tokens[authorization] = now + settings.cache_seconds
  return true
end

-- access phase of a local adaptor's location: answer here, or hand to the endpoint
function M.decide(adaptor)
  local method = ngx.req.get_method()
  local headers = ngx.req.get_headers()
  local where = settings.adaptors[adaptor]
  local path = ngx.var.request_filename
  local ours = (method == "GET" or method == "HEAD" or (method == "PUT" and where.writable))
      and type(headers["authorization"]) == "string" and ngx.var.args == nil
      and plain(method, headers) and clean(ngx.var.request_uri, ngx.var.uri)
      and path ~= where.root and path:sub(-1) ~= "/"
      and ffi.C.lstat(settings.flag, st) ~= 0  -- no lock anywhere
  if ours then
    -- nginx's own answers where they differ from the endpoint's (a missing folder, no
    -- permission, a link) are the endpoint's to give: those requests go to it
    local size, kind = look(path)
    local folder = path:match("^(.*)/[^/]*$")
    if method == "PUT" then
      ours = (size ~= nil or kind == "missing") and ffi.C.access(folder, W_OK_X_OK) == 0
    else
      ours = size ~= nil and ffi.C.access(path, R_OK) == 0
    end
    ours = ours and inside(where.real, folder)
  end
  if not (ours and admitted(headers["authorization"])) then
    return ngx.exec("@endpoint")
  end
  if method == "PUT" then
    ngx.req.read_body()  -- whole (in a temporary file) before the lock check that counts
    if ffi.C.lstat(settings.flag, st) == 0 then
      return ngx.exec("@endpoint")
    end
  end
end

-- the endpoint hears each write before the answer goes out (davfront.py, heard_writes): a line
-- on its pipe; where the pipe has no room, the flag that makes it forget every listing
local O_CREAT_WRONLY_CLOEXEC = 0x40 + 0x1 + 0x80000
local function tell_endpoint(inner)
  local line = inner .. "\n"
  if #line > 4096 or ffi.C.write(settings.heard, line, #line) ~= #line then
    local fd = ffi.C.open(settings.lost, O_CREAT_WRONLY_CLOEXEC, 384)  -- 0600
    if fd >= 0 then
      ffi.C.close(fd)
    end
  end
end

-- header filter: the ETag of what was sent or written
function M.headers()
  local status = ngx.status
  if status == 200 or status == 201 or status == 204 then
    local size, mtime = look(ngx.var.request_filename)
    ngx.header["Location"] = nil  -- a PUT's: nginx names its own address, not the hub's
    if size ~= nil then
      ngx.header["ETag"] = etag(size, mtime)
      if status == 200 then
        ngx.header["Content-Type"] = content_type(ngx.var.uri:match("[^/]*$"))
        -- the endpoint's: the whole seconds of the same double (which may round a time up)
        ngx.header["Last-Modified"] = ngx.http_time(math.floor(mtime))
      end
      if ngx.req.get_method() == "PUT" then
        ngx.ctx.written = {size, mtime}
        tell_endpoint(ngx.var.uri:sub(#settings.mount + 2))
      end
    end
  end
end

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return string.format("\\u%04x", c:byte())
  end) .. '"'
end

-- log phase: a PUT that succeeded is a line on the write feed (adaptors/writefeed.py's format)
function M.tell()
  local written = ngx.ctx.written
  if not written or settings.feed == nil then
    return
  end
  local inner = ngx.var.uri:sub(#settings.mount + 2)
  local line = string.format('{"changed": %s, "size": %d, "mtime": %.17g}\n', json_string(inner), written[1],
                             written[2])
  if #line <= 4096 then  -- PIPE_BUF: one write, never interleaved; a longer one the rescan finds
    ffi.C.write(settings.feed, line, #line)
  end
end

return M
