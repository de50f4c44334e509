vcl 4.1;
#
# django-tiercache: Varnish 7 + varnish-modules (xkey) configuration.
#
# What it does (see docs/purgers.rst):
#   - PURGE with an "xkey" header purges every object tagged with any of its space-separated keys;
#     with "xkey-softpurge" it marks them stale instead (served during grace while refreshed).
#   - BAN bans everything (VarnishPurger.purge_all()).
#   - Both only from an address in the "purgers" ACL AND with the right X-Purge-Token header.
#   - The origin's Surrogate-Key (or Cache-Tag) becomes the object's xkey index; Surrogate-Control
#     max-age is the TTL; stale-while-revalidate is the grace; stale-if-error keeps stale objects
#     to serve while the backend is sick (add a .probe to the backend for that).
#   - Surrogate-Key, Surrogate-Control, Cache-Tag and xkey never reach clients; X-Cache says
#     HIT or MISS.
#   - Requests with a Cookie or Authorization header are only cached when the response says
#     Cache-Control: public, and then apart from anonymous requests.
#
# To deploy: set the backend host and port, the purgers ACL and replace the token
# "CHANGE-ME-purge-token" by a long random secret (VarnishPurger's TOKEN option).
# Needs: varnishd 7.x and libvmod_xkey (Debian/Ubuntu: apt-get install varnish varnish-modules).

import std;
import xkey;

backend default {
    .host = "127.0.0.1";
    .port = "8000";
    # For stale-if-error, let Varnish know when the backend is sick, e.g.:
    # .probe = { .url = "/healthz"; .interval = 5s; .timeout = 2s; .window = 5; .threshold = 3; }
}

# Addresses allowed to purge: the hosts running the Celery workers (and the app, for PURGE_ASYNC
# = False). Keep it short.
acl purgers {
    "localhost";
    "127.0.0.1";
    "::1";
}

sub vcl_recv {
    if (req.method == "PURGE" || req.method == "BAN") {
        if (client.ip !~ purgers) {
            return (synth(403, "Forbidden: address not allowed to purge"));
        }
        if (req.http.X-Purge-Token != "CHANGE-ME-purge-token") {
            return (synth(403, "Forbidden: bad purge token"));
        }
        if (req.method == "BAN") {
            # A lurker-friendly ban (it only tests obj.*): every object now cached is gone.
            ban("obj.status != 0");
            return (synth(200, "Banned everything"));
        }
        if (req.http.xkey) {
            set req.http.X-Tiercache-Count = xkey.purge(req.http.xkey);
            return (synth(200, "Purged " + req.http.X-Tiercache-Count + " objects"));
        }
        if (req.http.xkey-softpurge) {
            set req.http.X-Tiercache-Count = xkey.softpurge(req.http.xkey-softpurge);
            return (synth(200, "Soft-purged " + req.http.X-Tiercache-Count + " objects"));
        }
        return (synth(400, "Bad request: no xkey or xkey-softpurge header"));
    }
    # Never forward the purge secret, and only this VCL may ask for a grace-less refetch.
    unset req.http.X-Purge-Token;
    if (req.restarts == 0) {
        unset req.http.X-Tiercache-Refresh;
    } elsif (req.http.X-Tiercache-Refresh) {
        set req.grace = 0s;
    }
    if (req.method != "GET" && req.method != "HEAD") {
        return (pass);
    }
    # Unlike the built-in VCL, look up requests with a Cookie or Authorization: vcl_hash keeps
    # them apart, and vcl_backend_response only caches them when the response is public.
    return (hash);
}

sub vcl_hash {
    if (req.http.Cookie || req.http.Authorization) {
        hash_data("tiercache:credentials");
    }
    # Falls through to the built-in vcl_hash (URL and host).
}

sub vcl_hit {
    # Past its TTL, an object is served stale (and refreshed in the background) for its
    # stale-while-revalidate window; beyond that only while the backend is sick (stale-if-error).
    if (obj.ttl < 0s
        && obj.ttl + std.duration(obj.http.X-Tiercache-SWR, 0s) < 0s
        && std.healthy(req.backend_hint)) {
        set req.http.X-Tiercache-Refresh = "1";
        return (restart);
    }
}

sub vcl_backend_response {
    # Surrogate-Key (Fastly style, space-separated) or Cache-Tag (Cloudflare style, commas) become
    # the xkey header, which the xkey vmod indexes when the object is stored.
    if (beresp.http.Surrogate-Key) {
        set beresp.http.xkey = beresp.http.Surrogate-Key;
    } elsif (beresp.http.Cache-Tag) {
        set beresp.http.xkey = regsuball(beresp.http.Cache-Tag, "\s*,\s*", " ");
    }

    # Surrogate-Control is for us: max-age is the TTL, stale-while-revalidate the grace,
    # stale-if-error how long a stale object may still serve while the backend is sick.
    if (beresp.http.Surrogate-Control ~ "(?i)(^|[\s,])max-age=\d+") {
        set beresp.ttl = std.duration(regsub(beresp.http.Surrogate-Control,
            "(?i)^(.*[\s,])?max-age=(\d+).*$", "\2") + "s", 0s);
    }
    set beresp.http.X-Tiercache-SWR = "0s";
    if (beresp.http.Surrogate-Control ~ "(?i)stale-while-revalidate=\d+") {
        set beresp.http.X-Tiercache-SWR = regsub(beresp.http.Surrogate-Control,
            "(?i)^.*stale-while-revalidate=(\d+).*$", "\1") + "s";
        set beresp.grace = std.duration(beresp.http.X-Tiercache-SWR, 0s);
    }
    if (beresp.http.Surrogate-Control ~ "(?i)stale-if-error=\d+") {
        set beresp.grace = std.duration(regsub(beresp.http.Surrogate-Control,
            "(?i)^.*stale-if-error=(\d+).*$", "\1") + "s", beresp.grace);
    }

    # A request with credentials is cached only when the origin says the response is public.
    if ((bereq.http.Cookie || bereq.http.Authorization)
        && beresp.http.Cache-Control !~ "(?i)(^|[\s,])public([\s,]|$)") {
        set beresp.ttl = 120s;
        set beresp.uncacheable = true;
        return (deliver);
    }

    # A background refresh that fails keeps the stale object instead of caching the error.
    if (beresp.status >= 500 && bereq.is_bgfetch) {
        return (abandon);
    }
    # Falls through to the built-in VCL: Set-Cookie, no-store, private and Vary: * stay uncached.
}

sub vcl_deliver {
    if (obj.hits > 0) {
        set resp.http.X-Cache = "HIT";
    } else {
        set resp.http.X-Cache = "MISS";
    }
    unset resp.http.Surrogate-Key;
    unset resp.http.Surrogate-Control;
    unset resp.http.Cache-Tag;
    unset resp.http.xkey;
    unset resp.http.X-Tiercache-SWR;
}

sub vcl_synth {
    # Purge answers are short plain text: the reason phrase is the message VarnishPurger reports.
    set resp.http.Content-Type = "text/plain; charset=utf-8";
    set resp.body = resp.reason;
    return (deliver);
}
