package LLMTest;

# A small harness for the module's tests: starts nginx with a generated
# config on free loopback ports, starts mock backends and the Azure
# OpenAI simulator, talks HTTP over real sockets, stops everything on
# exit and fails the test on [alert]/[emerg] or a sanitizer report.
#
# Environment: LLM_NGINX (nginx binary), LLM_MODULE (the .so to load;
# empty for a static build), LLM_TEST_TIMEOUT (seconds per test file).

use strict;
use warnings;

use Cwd qw(abs_path);
use Digest::MD5 qw(md5_hex);
use Fcntl qw(O_WRONLY O_CREAT O_EXCL);
use File::Basename qw(dirname);
use File::Spec;
use File::Temp qw(tempdir);
use IO::Select;
use IO::Socket::INET;
use JSON::PP;
use POSIX qw(WNOHANG);
use Socket qw(IPPROTO_TCP TCP_NODELAY);
use Test::More;
use Time::HiRes qw(sleep time);
use Digest::SHA qw(sha256_hex);

use Exporter qw(import);
our @EXPORT = qw(http_request http_get http_post http_parallel post_raw
                 json_decode json_encode free_port wait_for llm_status
                 status_consumer status_redis redis_trouble vocab_dir);

my $TOP = abs_path(dirname(__FILE__) . '/../..');
my @ALL;

sub new {
    my ($class, %opt) = @_;

    my $nginx = $ENV{LLM_NGINX} or plan skip_all => 'LLM_NGINX is not set';
    plan skip_all => "LLM_NGINX $nginx is not executable" unless -x $nginx;

    my $self = bless {
        nginx   => $nginx,
        module  => $ENV{LLM_MODULE} // '',
        dir     => tempdir('llmtest-XXXXXX', TMPDIR => 1,
                           CLEANUP => !$ENV{LLM_TEST_KEEP}),
        pids    => [],
        top     => $TOP,
    }, $class;

    # nginx opens its compiled-in error log before it reads the config
    mkdir "$self->{dir}/logs";

    # workers of a root master run as nobody and must reach temp paths
    chmod 0755, $self->{dir};

    push @ALL, $self;

    # nginx frees its pools at exit only in part, and every dynamic
    # module defines its own ngx_module_names: neither is a bug of ours
    $ENV{ASAN_OPTIONS} //= 'detect_leaks=0:detect_odr_violation=0';
    $ENV{UBSAN_OPTIONS} //= 'print_stacktrace=1';

    my $timeout = $ENV{LLM_TEST_TIMEOUT} || 120;
    $SIG{ALRM} = sub { die "test timed out after $timeout s\n" };
    alarm $timeout;

    return $self;
}

sub dir { $_[0]{dir} }
sub top { $_[0]{top} }

# a port below the kernel's ephemeral range (32768-60999 on Linux): a
# port that range gave out may be taken as the source port of an
# outgoing connection before nginx binds it (CI once saw "Address already
# in use" that way); free on every address, and not given out before.
#
# Tests run two at a time (prove -j2), and a port is free only until its
# server binds it, so each port given is also kept in a file of its own
# in a directory every test shares, created with O_EXCL and holding the
# test's pid: another test skips it until that test ends (its END below
# removes the file) or dies (its pid is gone)

my (%given, $PORTS);

sub reserve_port {
    my ($port) = @_;

    my $file = "$PORTS/$port";
    for (1 .. 2) {
        if (sysopen my $fh, $file, O_WRONLY | O_CREAT | O_EXCL, 0600) {
            print $fh "$$\n";
            close $fh;
            return 1;
        }
        return 0 unless $!{EEXIST};

        # held by a test still running, or being written this instant
        open my $fh, '<', $file or next;
        my $pid = <$fh> // '';
        close $fh;
        return 0 unless $pid =~ /^(\d+)$/ && !kill(0, $1) && $!{ESRCH};
        unlink $file;
    }
    return 0;
}

sub free_port {
    $PORTS //= $ENV{LLM_PORT_DIR}
               // File::Spec->tmpdir . "/llmtest-ports-$<";
    mkdir $PORTS, 0700;

    for (1 .. 1000) {
        my $port = 10000 + int(rand(22000));
        next if $given{$port};
        next unless reserve_port($port);
        my $s = IO::Socket::INET->new(LocalAddr => '0.0.0.0',
                                      LocalPort => $port, Proto => 'tcp',
                                      Listen => 1, ReuseAddr => 1);
        if (!$s) {
            unlink "$PORTS/$port";
            next;
        }
        close $s;
        $given{$port} = $$;
        return $port;
    }
    die "no free port";
}

sub release_ports {
    for my $port (keys %given) {
        unlink "$PORTS/$port" if $given{$port} == $$;
    }
}

# nginx.conf around the http block a test gives; returns the conf text

sub nginx_conf {
    my ($self, $http, %opt) = @_;

    my $dir = $self->{dir};
    my $load = $self->{module} ? "load_module $self->{module};\n" : '';
    my $workers = $opt{workers} // 1;

    return <<"END";
${load}worker_processes $workers;
daemon off;
master_process on;
pid $dir/nginx.pid;
error_log $dir/error.log debug;
events { worker_connections 256; }
http {
    access_log $dir/access.log;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy_temp;
    fastcgi_temp_path $dir/fastcgi_temp;
    uwsgi_temp_path $dir/uwsgi_temp;
    scgi_temp_path $dir/scgi_temp;
$http
}
END
}

# $opt{conf}: a whole nginx.conf instead of an http block

sub write_conf {
    my ($self, $http, %opt) = @_;
    my $file = "$self->{dir}/nginx.conf";
    open my $fh, '>', $file or die "$file: $!";
    print $fh $opt{conf} // $self->nginx_conf($http, %opt);
    close $fh;
    return $file;
}

# nginx -t on a config; returns (exit status, output)

sub test_conf {
    my ($self, $http, %opt) = @_;
    my $file = $self->write_conf($http, %opt);
    my $out = `$self->{nginx} -p $self->{dir} -c $file -t 2>&1`;
    return ($? >> 8, $out);
}

sub start_nginx {
    my ($self, $http, %opt) = @_;

    my $file = $self->write_conf($http, %opt);
    my $dir = $self->{dir};


    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open STDOUT, '>>', "$dir/stderr.log";
        open STDERR, '>>', "$dir/stderr.log";
        exec $self->{nginx}, '-p', $dir, '-c', $file;
        die "exec: $!";
    }

    $self->{nginx_pid} = $pid;

    # nginx loading the vocabularies (llm_tokenizer) took up to 6 s on a
    # loaded 2-core machine: 10 s was too close
    for my $port (@{ $opt{ports} || [] }) {
        wait_port($port, 30) or die "nginx did not listen on $port:\n"
                                    . $self->read_file('error.log')
                                    . $self->read_file('stderr.log');
    }

    return $pid;
}

sub reload_nginx {
    my ($self, $http, %opt) = @_;
    $self->write_conf($http, %opt) if defined $http;
    kill 'HUP', $self->{nginx_pid};
}

# $signal: QUIT (a graceful stop, the default) or TERM (nginx -s stop)

sub stop_nginx {
    my ($self, $signal) = @_;
    my $pid = delete $self->{nginx_pid} or return;
    kill $signal // 'QUIT', $pid;
    my $deadline = time + 10;
    while (time < $deadline) {
        return if waitpid($pid, WNOHANG) == $pid;
        sleep 0.05;
    }
    kill 'KILL', $pid;
    waitpid $pid, 0;
}

###########################################################################
# conf-examples/: a reader's nginx.conf, made to run here

# The text of an example rewritten for this test's directory: our module;
# free ports for the 8080-8099 it listens on (the map returned says which
# is which); the vocabularies we built; every file under /etc/nginx/llm/
# written here (keys and tokens "example-key"; *.htpasswd with the user
# "example" and the password "example-password", see passwd_scheme);
# backends at $opt{backends}{host} ("address:port") when given, else at
# loopback addresses where nothing listens (nginx -t never connects);
# trusted certificates replaced by $opt{ca} when given, else, when the
# system's bundle is missing, by a throw-away CA so that nginx -t has one
# to load. Returns (text, { example port => our port }).

sub example_conf {
    my ($self, $file, %opt) = @_;

    open my $fh, '<', $file or die "$file: $!";
    my $conf = do { local $/; <$fh> };
    close $fh;

    my $module = $self->{module};
    $conf =~ s{^load_module\s+\S+;}
              {$module ? "load_module $module;" : ''}me;

    my %port;
    $conf =~ s{\b(80[89]\d)\b}{$port{$1} //= free_port()}ge;

    my $n = 0;
    my $backends = $opt{backends};
    $conf =~ s{^(\s*llm_backend\s[^;]*?);}{
        my $b = $1;
        if ($backends) {
            my ($host) = $b =~ m{\bhttps?://([^/:\s;]+)}
                or die "$file: a backend without a URL: $b\n";
            my $addr = $backends->{lc $host}
                or die "$file: no address for $host\n";
            $b =~ s{\s+address=\S+}{};
            "$b address=$addr;";
        } else {
            $b =~ /\baddress=/ ? "$b;" : "$b address=127.0.0." . ++$n . ":1;";
        }
    }gme;

    my $vocab = vocab_dir();
    $conf =~ s{/usr/share/nginx-llm/}{$vocab/}g;

    # caches in the test's directory
    $conf =~ s{/var/cache/nginx/([\w.-]+)}{$self->{dir}/cache-$1}g;

    my $etc = "$self->{dir}/etc";
    mkdir $etc;
    $conf =~ s{/etc/nginx/llm/([\w.-]+)}{
        my $f = "$etc/$1";
        unless (-e $f) {
            my $line = "example-key\n";
            if ($f =~ /\.htpasswd$/) {
                my $scheme = $self->passwd_scheme;
                my $hash = `openssl passwd -$scheme example-password`;
                die "openssl passwd: $hash" if $? || $hash !~ /^\$/;
                $line = "example:$hash";
            }
            open my $out, '>', $f or die "$f: $!";
            print $out $line;
            close $out;
        }
        $f;
    }ge;

    $conf =~ s{(\b\w+_trusted_certificate\s+)([^\s;]+);}{
        $1 . ($opt{ca} // (-r $2 ? $2 : $self->throwaway_ca)) . ';';
    }ge;

    return ($conf, \%port);
}

# SHA-512 crypt ("6"), checked by the C library's crypt(); in a
# sanitizer build, whose configure found ASan's crypt() and so linked no
# libcrypt, that call crashes: there nginx's own MD5 ("apr1")

sub passwd_scheme {
    my ($self) = @_;
    my $v = `$self->{nginx} -V 2>&1`;
    return $v =~ /-fsanitize=/ ? 'apr1' : '6';
}

# a CA that signed none of the simulator's certificates

sub throwaway_ca {
    my ($self) = @_;
    my $pem = "$self->{dir}/throwaway-ca.pem";
    return $pem if -s $pem;
    my $key = "$self->{dir}/throwaway-ca.key";
    my $cmd = 'openssl req -x509 -newkey rsa:2048 -nodes -days 2 '
            . "-subj /CN=throwaway-ca -keyout $key -out $pem 2>&1";
    my $out = `$cmd`;
    die "openssl: $out" if $?;
    return $pem;
}

# nginx with an example (see example_conf), its pid, error log and
# temporary files in our directory; returns the port map

sub start_example {
    my ($self, $file, %opt) = @_;

    my ($conf, $port) = $self->example_conf($file, %opt);
    my $dir = $self->{dir};

    my $temp = join '', map { "    ${_}_temp_path $dir/${_}_temp;\n" }
                        qw(client_body proxy fastcgi uwsgi scgi);
    $conf =~ s{^(http\s*\{[^\n]*\n)}{$1$temp}m
        or die "$file: no http block\n";
    $conf = "daemon off;\nmaster_process on;\npid $dir/nginx.pid;\n"
          . "error_log $dir/error.log info;\n$conf";

    $self->start_nginx(undef, conf => $conf, ports => [values %$port]);
    return $port;
}

# The simulator serving an example's backends: one port per host (over
# TLS with the simulator's CA for https:// URLs), a deployment per
# llm_backend under the backend's name, with its deployment= name, "ptu"
# kind for ptu backends, the key or token "example-key", and fast
# replies; $opt{all} settings go to every deployment, $opt{deployments}
# {name} to one. Returns the options start_example needs (backends, ca).

sub start_sim_for_example {
    my ($self, $file, %opt) = @_;

    open my $fh, '<', $file or die "$file: $!";
    my $text = do { local $/; <$fh> };
    close $fh;
    $text =~ s/#[^\n]*//g;

    my (%port, %seen, @deployments, $tls);
    while ($text =~ m{^\s*llm_backend\s+(\S+)\s+(https?)://([^/:\s;]+)
                      (?::\d+)?([^;]*);}gmx)
    {
        my ($name, $scheme, $host, $rest) = ($1, $2, lc $3, $4);
        die "$file: backend name $name twice\n" if $seen{$name}++;
        my ($deployment) = $rest =~ /\bdeployment=(\S+)/;
        $port{$host} //= free_port();
        $tls ||= $scheme eq 'https';
        push @deployments, {
            name => $name, port => $port{$host}, host => $host,
            ($deployment ? (deployment => $deployment) : ()),
            tls => $scheme eq 'https' ? JSON::PP::true() : JSON::PP::false(),
            kind => $rest =~ /(?:^|\s)ptu(?:\s|$)/ ? 'ptu' : 'standard',
            ($rest =~ /\bbearer_file=/ ? (bearer => 'example-key')
                                       : (api_key => 'example-key')),
            tpm => 10_000_000, ttft_ms => [0, 0], tokens_per_s => 2000,
            completion_tokens => 10,
            %{ $opt{all} || {} }, %{ $opt{deployments}{$name} || {} },
        };
    }
    die "$file: no llm_backend\n" unless @deployments;

    my $certs = "$self->{dir}/certs";
    $self->start_sim({ control_port => free_port(),
                       ($tls ? (tls_dir => $certs) : ()),
                       deployments => \@deployments });

    return (backends => { map { $_ => "127.0.0.1:$port{$_}" } keys %port },
            ($tls ? (ca => "$certs/ca.pem") : ()));
}

sub read_file {
    my ($self, $name) = @_;
    open my $fh, '<', "$self->{dir}/$name" or return '';
    local $/;
    return <$fh>;
}

sub error_log { $_[0]->read_file('error.log') }

# the newest line of an access log once nginx has written one more than
# was seen last time (waits up to 2.5 s): a hash of its "|"-separated
# fields by the names given, or, without names, the line itself

sub next_log {
    my ($self, $file, @names) = @_;
    my $seen = \($self->{log_seen}{$file} //= 0);
    for (1 .. 50) {
        my @l = grep { length } split /\n/, $self->read_file($file);
        if (@l > $$seen) {
            $$seen = @l;
            return $l[-1] unless @names;
            my @f = split /\|/, $l[-1];
            return { map { $names[$_] => $f[$_] } 0 .. $#names };
        }
        sleep 0.05;
    }
    return @names ? {} : undef;
}

# a backend of canned replies: reads a POST, answers its path's bytes
# from %$reply (404 for another path) and closes.  Paths that match
# $opt{slow} are written in pieces, $opt{piece}->() bytes each (1 if not
# given), with $opt{pause} seconds (0.002) between them, so that each
# piece reaches nginx in a read of its own; $opt{prefix} is taken off
# the path before it is looked up

sub start_canned {
    my ($self, $reply, %opt) = @_;
    my $port = free_port();
    my $srv = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                    LocalPort => $port, Listen => 16,
                                    ReuseAddr => 1)
        or die "canned listen: $!";
    my $prefix = $opt{prefix} // '';
    my $piece = $opt{piece} // sub { 1 };
    my $pause = $opt{pause} // 0.002;

    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        alarm 0;
        while (my $c = $srv->accept) {
            my $buf = '';
            while ($buf !~ /\r\n\r\n/) {
                sysread($c, $buf, 65536, length $buf) or last;
            }
            my ($len) = $buf =~ /Content-Length: (\d+)/i;
            my $body = substr $buf, index($buf, "\r\n\r\n") + 4;
            while (defined $len && length $body < $len) {
                sysread($c, $body, 65536, length $body) or last;
            }
            my ($path) = $buf =~ m{^POST \Q$prefix\E(/\w+)};
            my $out = $reply->{$path // ''} // "HTTP/1.1 404 X\r\n\r\n";
            if (defined $opt{slow} && ($path // '') =~ $opt{slow}) {
                setsockopt($c, IPPROTO_TCP, TCP_NODELAY, 1);
                my $at = index($out, "\r\n\r\n") + 4;
                syswrite $c, substr($out, 0, $at);
                while ($at < length $out) {
                    my $n = $piece->($out, $at, $path);
                    syswrite $c, substr($out, $at, $n);
                    $at += $n;
                    select undef, undef, undef, $pause;
                }
            } else {
                syswrite $c, $out;
            }
            close $c;
        }
        POSIX::_exit(0);
    }
    close $srv;
    push @{ $self->{pids} }, $pid;
    return $port;
}

# a mock backend: answers every request with a JSON description of what
# it received, so tests can see what nginx forwarded; with mirror => 1,
# with the body itself (as one event of a stream if the request's
# X-Mirror-Type is text/event-stream) and the path in X-Mirror-Uri

sub start_echo {
    my ($self, %opt) = @_;
    my $port = free_port();
    my $srv = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                    LocalPort => $port, Listen => 64,
                                    ReuseAddr => 1, Proto => 'tcp')
        or die "echo listen: $!";

    my $log = "$self->{dir}/echo.log";
    $self->serve_forked($srv, sub { echo_connection($_[0], $log,
                                                    $opt{mirror}) });
    return $port;
}

# a server process that gives each connection accepted on $srv a process
# of its own, running $serve with the connection

sub serve_forked {
    my ($self, $srv, $serve) = @_;
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        $SIG{ALRM} = 'DEFAULT';
        alarm 0;
        $SIG{CHLD} = 'IGNORE';
        while (my $c = $srv->accept) {
            my $k = fork;
            if (defined $k && $k == 0) {
                $serve->($c);
                POSIX::_exit(0);
            }
            close $c;
        }
        POSIX::_exit(0);
    }
    close $srv;
    push @{ $self->{pids} }, $pid;
}

sub echo_connection {
    my ($c, $log, $mirror) = @_;
    binmode $c;
    while (1) {
        my $head = '';
        while ($head !~ /\r\n\r\n/) {
            my $n = sysread($c, $head, 65536, length $head);
            return unless $n;
        }
        my ($h, $rest) = split /\r\n\r\n/, $head, 2;
        my ($line, @lines) = split /\r\n/, $h;
        my ($method, $uri) = split / /, $line;
        my %hdr;
        for (@lines) {
            my ($k, $v) = /^([^:]+):\s*(.*)$/ or next;
            $hdr{lc $k} = $v;
        }
        my $body = $rest;
        if (defined $hdr{'content-length'}) {
            while (length $body < $hdr{'content-length'}) {
                my $n = sysread($c, $body, 65536, length $body);
                return unless $n;
            }
        } elsif (($hdr{'transfer-encoding'} // '') =~ /chunked/i) {
            $body = read_chunked($c, $body);
        }
        if (open my $fh, '>>', $log) {
            print $fh "$method $uri\n";
            close $fh;
        }
        if ($mirror) {
            my $type = $hdr{'x-mirror-type'} // 'application/json';
            $body = "data: $body\n\ndata: [DONE]\n\n" if $type =~ /stream/;
            syswrite $c, "HTTP/1.1 200 OK\r\nContent-Type: $type\r\n"
                         . "X-Mirror-Uri: $uri\r\n"
                         . "Content-Length: " . length($body) . "\r\n\r\n"
                         . $body;
            return if ($hdr{connection} // '') =~ /close/i;
            next;
        }
        my $out = JSON::PP->new->canonical->encode({
            method => $method, uri => $uri, headers => \%hdr,
            body_len => length $body, body_md5 => md5_hex($body),
            choices => [ { message => { role => 'assistant',
                                        content => 'echo' } } ],
        });
        syswrite $c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     . "Content-Length: " . length($out) . "\r\n\r\n$out";
        return if ($hdr{connection} // '') =~ /close/i;
    }
}

# requests the echo backends have seen, as "METHOD URI" lines

sub echo_requests {
    my ($self) = @_;
    return grep { length } split /\n/, $self->read_file('echo.log');
}

sub read_chunked {
    my ($c, $buf) = @_;
    my $body = '';
    while (1) {
        while ($buf !~ /\r\n/) {
            sysread($c, $buf, 65536, length $buf) or return $body;
        }
        $buf =~ s/^([0-9a-fA-F]+)[^\r]*\r\n// or return $body;
        my $size = hex $1;
        while (length $buf < $size + 2) {
            sysread($c, $buf, 65536, length $buf) or return $body;
        }
        if ($size == 0) {
            return $body;
        }
        $body .= substr $buf, 0, $size;
        substr($buf, 0, $size + 2) = '';
    }
}

# the Azure OpenAI simulator (tools/aoai-sim) with a JSON config; returns
# the listening ports by deployment name

sub start_sim {
    my ($self, $config, @args) = @_;
    my $file = "$self->{dir}/sim.json";
    open my $fh, '>', $file or die "$file: $!";
    print $fh JSON::PP->new->canonical->encode($config);
    close $fh;

    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open STDOUT, '>>', "$self->{dir}/sim.log";
        open STDERR, '>>', "$self->{dir}/sim.log";
        exec 'python3', "$TOP/tools/aoai-sim", '--config', $file, @args;
        die "exec: $!";
    }
    push @{ $self->{pids} }, $pid;

    my $ctl = $config->{control_port};
    wait_port($ctl, 10) or die "simulator did not start:\n"
                               . $self->read_file('sim.log');
    for my $d (@{ $config->{deployments} }) {
        wait_port($d->{port}, 10) or die "simulator port $d->{port}\n";
    }
    $self->{sim_ctl} = $ctl;
    return $pid;
}

# tools/identity-sim, the managed identity endpoints' stand-in, on free
# loopback ports (the second over TLS, its CA in $dir/idcerts/ca.pem);
# @args go to it as they are (--tls6-port P: TLS on [::1] as well);
# returns (port, TLS port)

sub start_identity_sim {
    my ($self, @args) = @_;
    my ($port, $tls) = (free_port(), free_port());
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open STDOUT, '>>', "$self->{dir}/identity-sim.log";
        open STDERR, '>>', "$self->{dir}/identity-sim.log";
        exec 'python3', "$TOP/tools/identity-sim", '--port', $port,
             '--tls-port', $tls, '--tls-dir', "$self->{dir}/idcerts", @args;
        die "exec: $!";
    }
    push @{ $self->{pids} }, $pid;
    for my $p ($port, $tls) {
        wait_port($p, 10) or die "identity-sim did not start:\n"
                                 . $self->read_file('identity-sim.log');
    }
    $self->{identity_port} = $port;
    return ($port, $tls);
}

sub identity_stats {
    my ($self) = @_;
    my ($st, $h, $body) = http_get($self->{identity_port}, '/sim/stats');
    die "identity-sim stats: $st" unless $st == 200;
    return json_decode($body);
}

# e.g. { fail => 500, fail_count => -1 }, { lifetime => 4 }

sub identity_set {
    my ($self, $settings) = @_;
    my ($st) = http_post($self->{identity_port}, '/sim/set',
                         json_encode($settings));
    die "identity-sim set: $st" unless $st == 200;
}

# a redis-server of our own on a free loopback port, nothing saved to
# disk; $opt{port} starts it again where it was, $opt{args} adds options
# (e.g. [--requirepass => 'x']); returns the port

sub start_redis {
    my ($self, %opt) = @_;
    my $port = $opt{port} // free_port();
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        open STDOUT, '>>', "$self->{dir}/redis.log";
        open STDERR, '>>', "$self->{dir}/redis.log";
        # tls => [ cert, key, ca ]: TLS only, on $port
        my @port = $opt{tls}
                 ? ('--port', 0, '--tls-port', $port,
                    '--tls-cert-file', $opt{tls}[0],
                    '--tls-key-file', $opt{tls}[1],
                    '--tls-ca-cert-file', $opt{tls}[2])
                 : ('--port', $port);
        exec 'redis-server', @port, '--bind', '127.0.0.1',
             '--save', '', '--appendonly', 'no', '--dir', $self->{dir},
             '--daemonize', 'no', @{ $opt{args} || [] };
        die "exec redis-server: $!";
    }
    push @{ $self->{pids} }, $pid;
    $self->{redis_pid} = $pid;
    wait_port($port, 10) or die "redis-server did not start:\n"
                                . $self->read_file('redis.log');
    return $port;
}

# a link with lag: a TCP proxy to 127.0.0.1:$to that holds every piece
# of the replies $ms milliseconds before passing it on, in order, as a
# store far away or a loaded one would; the requests pass at once.
# With $ms a file's path, the file says how long, and can change.

sub start_lag {
    my ($self, $to, $ms) = @_;
    my $port = free_port();
    my $srv = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                    LocalPort => $port, Listen => 64,
                                    ReuseAddr => 1)
        or die "lag listen: $!";

    $self->serve_forked($srv, sub { lag_connection($_[0], $to, $ms) });
    return $port;
}

sub lag_connection {
    my ($c, $to, $ms) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $to)
        or return;
    my @held;                           # [ due, bytes ], oldest first
    while (1) {
        my $rin = '';
        vec($rin, fileno $c, 1) = 1;
        vec($rin, fileno $s, 1) = 1;
        my $wait = @held ? _positive($held[0][0] - time) : undef;
        select(my $rout = $rin, undef, undef, $wait);
        if (vec($rout, fileno $c, 1)) {
            sysread($c, my $buf, 65536) or return;
            syswrite($s, $buf);
        }
        if (vec($rout, fileno $s, 1)) {
            sysread($s, my $buf, 65536) or return;
            my $lag = $ms;
            if ($ms !~ /^\d+$/) {
                open my $fh, '<', $ms or die "lag: $ms: $!";
                $lag = <$fh> // 0;
                chomp $lag;
            }
            push @held, [ time + $lag / 1000, $buf ];
        }
        while (@held && $held[0][0] <= time) {
            syswrite($c, (shift @held)->[1]);
        }
    }
}

sub _positive { $_[0] > 0 ? $_[0] : 0 }

# $signal: TERM (a clean stop) or KILL (a crash)

sub stop_redis {
    my ($self, $signal) = @_;
    my $pid = delete $self->{redis_pid} or return;
    kill $signal // 'TERM', $pid;
    waitpid $pid, 0;
    @{ $self->{pids} } = grep { $_ != $pid } @{ $self->{pids} };
}

sub redis_cli {
    my ($self, $port, @args) = @_;
    my $out = `redis-cli -h 127.0.0.1 -p $port @args 2>&1`;
    return $out;
}

sub sim_stats {
    my ($self) = @_;
    my ($st, $h, $body) = http_get($self->{sim_ctl}, '/sim/stats');
    die "simulator stats: $st" unless $st == 200;
    return json_decode($body);
}

sub sim_reset {
    my ($self) = @_;
    http_post($self->{sim_ctl}, '/sim/reset', '{}');
}

# change a simulated deployment's settings live (a partial object, e.g.
# { faults => { 500 => 1 } } or { tpm => 1000 }); returns the new settings

sub sim_update {
    my ($self, $name, $partial) = @_;
    my ($st, $h, $body) = http_post($self->{sim_ctl}, "/sim/deployments/$name",
                                    json_encode($partial));
    die "simulator update of $name: $st $body" unless $st == 200;
    return json_decode($body);
}

# the events of a text/event-stream body: a list of { event => NAME or
# undef, data => TEXT } (several data: lines are joined by "\n")

sub sse_events {
    my ($body) = @_;
    my @events;
    for my $block (split /\n\n/, $body) {
        my (%e, @data);
        for my $line (split /\n/, $block) {
            if ($line =~ /^data: ?(.*)$/s) { push @data, $1 }
            elsif ($line =~ /^event: ?(.*)$/) { $e{event} = $1 }
        }
        next unless @data;
        $e{data} = join "\n", @data;
        push @events, \%e;
    }
    return @events;
}

# a request with a chosen Host header (the simulator routes by Host);
# returns what http_request returns

sub post_host {
    my ($port, $host, $uri, $body, %hdr) = @_;
    return http_request($port, raw_post($host, $uri, $body, %hdr));
}

sub raw_post {
    my ($host, $uri, $body, %hdr) = @_;
    my $h = join '', map { "$_: $hdr{$_}\r\n" } sort keys %hdr;
    return "POST $uri HTTP/1.1\r\nHost: $host\r\n"
           . "Content-Type: application/json\r\n$h"
           . "Content-Length: " . length($body) . "\r\n"
           . "Connection: close\r\n\r\n$body";
}

# the same over TLS: SNI $opt{sni}, certificate verified against
# $opt{ca} for the name $opt{verify} (default: the SNI); dies when the
# handshake or the verification fails

sub https_request {
    my ($port, $raw, %opt) = @_;
    require IO::Socket::SSL;
    my $name = $opt{verify} // $opt{sni};
    my $s = IO::Socket::SSL->new(
        PeerAddr => '127.0.0.1', PeerPort => $port, Timeout => 5,
        SSL_hostname => $opt{sni},
        SSL_ca_file => $opt{ca},
        SSL_verify_mode => IO::Socket::SSL::SSL_VERIFY_PEER(),
        SSL_verifycn_name => $name,
        SSL_verifycn_scheme => 'http')
        or die "TLS to $port ($opt{sni}): " . IO::Socket::SSL::errstr() . "\n";
    binmode $s;
    print $s $raw;
    my $buf = '';
    while (1) {
        my $n = sysread($s, $buf, 65536, length $buf);
        last unless $n;
        last if response_complete($buf);
    }
    close $s;
    return parse_response($buf);
}

sub wait_port {
    my ($port, $secs) = @_;
    my $deadline = time + $secs;
    while (time < $deadline) {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $port, Proto => 'tcp');
        if ($s) { close $s; return 1 }
        sleep 0.05;
    }
    return 0;
}

# HTTP over a real socket; the raw request is sent as given (tests of
# chunked bodies and odd framing write their own).  Returns (status,
# headers with lower-case names, body) after the server closes or the
# response is complete.

sub http_request {
    my ($port, $raw, %opt) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Proto => 'tcp', Timeout => 5)
        or die "connect $port: $!";
    binmode $s;
    my $off = 0;
    while ($off < length $raw) {
        my $n = syswrite($s, $raw, 65536, $off);
        die "write: $!" unless defined $n;
        $off += $n;
    }
    my $buf = '';
    my $sel = IO::Select->new($s);
    my $deadline = time + ($opt{timeout} // 30);
    while (time < $deadline) {
        last unless $sel->can_read($deadline - time);
        my $n = sysread($s, $buf, 65536, length $buf);
        last unless $n;
        last if response_complete($buf);
    }
    close $s;
    return parse_response($buf);
}

# several requests at once, each on its own connection, all written
# before any answer is read; returns [status, headers, body] for each

sub http_parallel {
    my ($port, @raws) = @_;
    my @socks = map {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1',
                                      PeerPort => $port, Proto => 'tcp')
            or die "connect $port: $!";
        binmode $s;
        print $s $_;
        $s;
    } @raws;
    my @out;
    for my $s (@socks) {
        my $buf = '';
        my $sel = IO::Select->new($s);
        while ($sel->can_read(30)) {
            my $n = sysread($s, $buf, 65536, length $buf);
            last unless $n;
            last if response_complete($buf);
        }
        close $s;
        push @out, [parse_response($buf)];
    }
    return @out;
}

sub post_raw {
    my ($uri, $body) = @_;
    return "POST $uri HTTP/1.1\r\nHost: localhost\r\n"
         . "Content-Type: application/json\r\nConnection: close\r\n"
         . "Content-Length: " . length($body) . "\r\n\r\n$body";
}

# called at every read: the buffer by reference, and a look at its end
# for the last chunk, not a copy or a scan of a long stream's every byte

sub response_complete {
    my $buf = \$_[0];
    my $i = index($$buf, "\r\n\r\n");
    return 0 if $i < 0;
    my $head = substr $$buf, 0, $i;
    if ($head =~ /^content-length:\s*(\d+)/mi) {
        return length($$buf) - $i - 4 >= $1;
    }
    if ($head =~ /^transfer-encoding:\s*chunked/mi) {
        return substr($$buf, -7) eq "\r\n0\r\n\r\n" ? 1 : 0;
    }
    return 0;
}

sub parse_response {
    my ($buf) = @_;
    my $i = index($buf, "\r\n\r\n");
    return (0, {}, $buf) if $i < 0;
    my ($line, @lines) = split /\r\n/, substr($buf, 0, $i);
    my $body = substr $buf, $i + 4;
    my ($status) = $line =~ m{^HTTP/\d\.\d (\d+)};
    my %h;
    for (@lines) {
        my ($k, $v) = /^([^:]+):\s*(.*)$/ or next;
        $h{lc $k} = exists $h{lc $k} ? "$h{lc $k}, $v" : $v;
    }
    if (($h{'transfer-encoding'} // '') =~ /chunked/i) {
        # read on with pos(): cutting each chunk off the front copied
        # the rest every time, minutes for a stream of some megabytes
        # on a loaded machine (t/route_hedge.t's slow reader)
        my $out = '';
        pos($body) = 0;
        while ($body =~ /\G([0-9a-fA-F]+)[^\r]*\r\n/gc) {
            my $size = hex $1;
            last if $size == 0;
            my $at = pos $body;
            $out .= substr $body, $at, $size;
            last if $at + $size + 2 > length $body;
            pos($body) = $at + $size + 2;
        }
        $body = $out;
    }
    return ($status // 0, \%h, $body);
}

sub http_get {
    my ($port, $uri, %hdr) = @_;
    my $h = join '', map { "$_: $hdr{$_}\r\n" } sort keys %hdr;
    return http_request($port, "GET $uri HTTP/1.1\r\nHost: localhost\r\n"
                               . "${h}Connection: close\r\n\r\n");
}

sub http_post {
    my ($port, $uri, $body, %hdr) = @_;
    my $h = join '', map { "$_: $hdr{$_}\r\n" } sort keys %hdr;
    return http_request($port, "POST $uri HTTP/1.1\r\nHost: localhost\r\n"
                               . "Content-Type: application/json\r\n$h"
                               . "Content-Length: " . length($body) . "\r\n"
                               . "Connection: close\r\n\r\n$body");
}

# the vocabularies nginx loads: the package's (LLM_VOCAB_DIR, set by
# build/nginx.sh deb), else those build/tokenizer.sh fetched from npm
sub vocab_dir {
    return $ENV{LLM_VOCAB_DIR}
           // "$TOP/.build/npm/node_modules/tiktoken/encoders";
}

# true once $check is, within $secs
sub wait_for {
    my ($secs, $check) = @_;
    my $deadline = time + $secs;
    while (time < $deadline) {
        return 1 if $check->();
        sleep 0.05;
    }
    return 0;
}

# llm_status of the nginx on $port, decoded (undef unless 200), and raw
sub llm_status {
    my ($port) = @_;
    my ($st, $h, $body) = http_get($port, '/status');
    return ($st == 200 ? json_decode($body) : undef, $body);
}

# a consumer of the first zone in llm_status, by its key's value
sub status_consumer {
    my ($port, $key, $var) = @_;
    my ($s) = llm_status($port);
    my $id = substr sha256_hex(($var // '$http_x_app') . "\0$key"), 0, 16;
    my ($c) = grep { $_->{consumer} eq $id } @{ $s->{consumers}[0]{top} };
    return $c;
}

# the Redis link of the first zone in llm_status ({} without one)
sub status_redis {
    my ($port) = @_;
    my ($s) = llm_status($port);
    return $s ? $s->{consumers}[0]{redis} // {} : {};
}

# what the instances on @ports admitted without Redis, their failed
# commands and their reports without a reply: a machine loaded past
# redis_timeout= has an instance admit on its share of a budget, as
# designed, and the shared counts are then no longer exact
sub redis_trouble {
    my $n = 0;
    for my $port (@_) {
        my $r = status_redis($port);
        $n += ($r->{degraded_admissions} // 0) + ($r->{errors} // 0)
              + ($r->{lost_reports} // 0);
    }
    return $n;
}

sub json_decode { JSON::PP->new->utf8->decode($_[0]) }
sub json_encode { JSON::PP->new->utf8->canonical->encode($_[0]) }

# on exit: stop what we started, then fail on alerts, emergencies and
# sanitizer reports (an [emerg] test may clear the log first)

sub check_logs {
    my ($self) = @_;
    my $log = $self->error_log . $self->read_file('stderr.log');
    my $allow = $self->{allow_re} // '^$';
    my @bad = grep { /\[(alert|emerg|crit)\]/ && !/$allow/ }
              split /\n/, $log;
    push @bad, grep { /AddressSanitizer|runtime error:|LeakSanitizer/ }
               split /\n/, $log;
    return @bad;
}

sub allow_log { $_[0]{allow_re} = $_[1] }

sub DESTROY {}

# stop everything, check the logs as one more test, and end the plan

sub done {
    my ($self) = @_;
    $self->cleanup;
    done_testing();
}

sub cleanup {
    my ($self) = @_;
    return if $self->{cleaned}++;
    $self->stop_nginx;

    # what we started gets TERM, then KILL after 10 s: a helper that
    # hangs on its way out must not hang the test (said in a diag)
    for my $pid (@{ $self->{pids} }) {
        kill 'TERM', $pid;
    }
    my $deadline = time + 10;
    for my $pid (@{ $self->{pids} }) {
        while (waitpid($pid, WNOHANG) == 0) {
            if (time > $deadline) {
                diag "process $pid did not stop on TERM in 10 s: killed";
                kill 'KILL', $pid;
                waitpid $pid, 0;
                last;
            }
            sleep 0.05;
        }
    }
    $self->{allow_re} //= '^$';
    my @bad = $self->check_logs;
    if (@bad) {
        splice @bad, 20;
        diag "error log:\n" . join "\n", @bad;
    }
    ok(!@bad, 'no [alert], [crit], [emerg] or sanitizer report in logs');
}

END {
    my $status = $?;
    $_->cleanup for @ALL;
    release_ports();
    $? = $status;
}

1;
