// meetpoint-nymea-probe drives nymea-remoteproxy's own client library so
// that meetpoint's interop suite (scripts/interop.sh) can test the library
// on every transport, WebSocket included (nymea's tunnelclient CLI only
// speaks TCP/SSL), and check bytes exactly (its CLI prints them escaped).
//
//   meetpoint-nymea-probe --role server|client --url URL [--ws]
//       --uuid UUID [--server-uuid UUID] [--send HEX] [--echo] [--timeout MS]
//
// server: registers UUID; each client that connects is sent HEX (if any)
//         and, with --echo, gets back what it sends.
// client: connects to --server-uuid and sends HEX once the tunnel is up.
// Both print one line per event on stdout and exit after --timeout
// (default 8000 ms): "READY", "CONNECTED <name>", "RECV <hex>",
// "ERROR <what>". Certificate errors are ignored (the suite's certificate
// is self-signed).

#include <QCoreApplication>
#include <QCommandLineParser>
#include <QTimer>
#include <QUuid>
#include <QUrl>
#include <cstdio>

#include "tunnelproxyremoteconnection.h"
#include "tunnelproxysocketserver.h"
#include "tunnelproxysocket.h"

using namespace remoteproxyclient;

static void say(const QByteArray &line)
{
    fprintf(stdout, "%s\n", line.constData());
    fflush(stdout);
}

int main(int argc, char *argv[])
{
    QCoreApplication app(argc, argv);
    QCommandLineParser p;
    QCommandLineOption role("role", "server or client", "role");
    QCommandLineOption url("url", "relay URL", "url");
    QCommandLineOption overWS("ws", "use the library's WebSocket transport");
    QCommandLineOption uuid("uuid", "our uuid", "uuid");
    QCommandLineOption serverUuid("server-uuid", "the server to reach (client)", "uuid");
    QCommandLineOption send("send", "bytes to send, in hex", "hex");
    QCommandLineOption echo("echo", "server: echo what clients send");
    QCommandLineOption timeout("timeout", "exit after this many ms", "ms", "8000");
    p.addOptions({role, url, overWS, uuid, serverUuid, send, echo, timeout});
    p.process(app);

    const QByteArray payload = QByteArray::fromHex(p.value(send).toLatin1());
    QTimer::singleShot(p.value(timeout).toInt(), &app, [](){ QCoreApplication::exit(0); });

    if (p.value(role) == "server") {
        auto *srv = new TunnelProxySocketServer(QUuid(p.value(uuid)), "probe-server",
            p.isSet(overWS) ? TunnelProxySocketServer::ConnectionTypeWebSocket : TunnelProxySocketServer::ConnectionTypeTcpSocket, &app);
        QObject::connect(srv, &TunnelProxySocketServer::sslErrors, srv, [srv](const QList<QSslError> &errs){ srv->ignoreSslErrors(errs); });
        QObject::connect(srv, &TunnelProxySocketServer::runningChanged, srv, [](bool running){
            say(running ? "READY" : "ERROR not running");
        });
        QObject::connect(srv, &TunnelProxySocketServer::clientConnected, srv, [&](TunnelProxySocket *s){
            say("CONNECTED " + s->clientName().toUtf8());
            QObject::connect(s, &TunnelProxySocket::dataReceived, s, [&p, &echo, s](const QByteArray &data){
                say("RECV " + data.toHex());
                if (p.isSet(echo))
                    s->writeData(data);
            });
            if (!payload.isEmpty())
                s->writeData(payload);
        });
        srv->startServer(QUrl(p.value(url)));
    } else {
        auto *c = new TunnelProxyRemoteConnection(QUuid(p.value(uuid)), "probe-client",
            p.isSet(overWS) ? TunnelProxyRemoteConnection::ConnectionTypeWebSocket : TunnelProxyRemoteConnection::ConnectionTypeTcpSocket, &app);
        QObject::connect(c, &TunnelProxyRemoteConnection::sslErrors, c, [c](const QList<QSslError> &errs){ c->ignoreSslErrors(errs); });
        QObject::connect(c, &TunnelProxyRemoteConnection::remoteConnectedChanged, c, [c, payload](bool up){
            say(up ? "READY" : "ERROR disconnected");
            if (up && !payload.isEmpty())
                c->sendData(payload);
        });
        QObject::connect(c, &TunnelProxyRemoteConnection::dataReady, c, [](const QByteArray &data){
            say("RECV " + data.toHex());
        });
        c->connectServer(QUrl(p.value(url)), QUuid(p.value(serverUuid)));
    }
    return app.exec();
}
