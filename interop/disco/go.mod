module github.com/meetpoint/meetpoint/interop/disco

go 1.26

require (
	github.com/mosaicnetworks/babble v0.8.0
	github.com/mosaicnetworks/disco v0.0.0
	github.com/pion/webrtc/v2 v2.2.0
	github.com/sirupsen/logrus v1.4.2
)

require (
	github.com/AndreasBriese/bbloom v0.0.0-20190306092124-e2d15f34fcf9 // indirect
	github.com/btcsuite/btcd v0.20.1-beta // indirect
	github.com/cheekybits/genny v1.0.0 // indirect
	github.com/dgraph-io/badger v1.6.0 // indirect
	github.com/dgryski/go-farm v0.0.0-20190423205320-6a90982ecee2 // indirect
	github.com/dustin/go-humanize v1.0.0 // indirect
	github.com/fsnotify/fsnotify v1.4.7 // indirect
	github.com/gammazero/nexus/v3 v3.0.0 // indirect
	github.com/golang/protobuf v1.3.1 // indirect
	github.com/google/uuid v1.1.1 // indirect
	github.com/gorilla/mux v1.7.4 // indirect
	github.com/gorilla/websocket v1.4.1 // indirect
	github.com/hashicorp/hcl v1.0.0 // indirect
	github.com/inconshreveable/mousetrap v1.0.0 // indirect
	github.com/jonknight73/badger v0.0.0-20200218142835-fa9c019859f6 // indirect
	github.com/konsorten/go-windows-terminal-sequences v1.0.2 // indirect
	github.com/lucas-clemente/quic-go v0.7.1-0.20190401152353-907071221cf9 // indirect
	github.com/magiconair/properties v1.8.1 // indirect
	github.com/marten-seemann/qtls v0.2.3 // indirect
	github.com/mattn/go-colorable v0.1.2 // indirect
	github.com/mattn/go-isatty v0.0.8 // indirect
	github.com/mgutz/ansi v0.0.0-20170206155736-9520e82c474b // indirect
	github.com/mitchellh/mapstructure v1.1.2 // indirect
	github.com/pelletier/go-toml v1.2.0 // indirect
	github.com/pion/datachannel v1.4.14 // indirect
	github.com/pion/dtls/v2 v2.0.0-rc.6 // indirect
	github.com/pion/ice v0.7.8 // indirect
	github.com/pion/logging v0.2.2 // indirect
	github.com/pion/mdns v0.0.4 // indirect
	github.com/pion/quic v0.1.1 // indirect
	github.com/pion/rtcp v1.2.1 // indirect
	github.com/pion/rtp v1.3.2 // indirect
	github.com/pion/sctp v1.7.4 // indirect
	github.com/pion/sdp/v2 v2.3.4 // indirect
	github.com/pion/srtp v1.2.7 // indirect
	github.com/pion/stun v0.3.3 // indirect
	github.com/pion/transport v0.8.10 // indirect
	github.com/pion/turn/v2 v2.0.2 // indirect
	github.com/pkg/errors v0.9.1 // indirect
	github.com/rifflock/lfshook v0.0.0-20180920164130-b9218ef580f5 // indirect
	github.com/spf13/afero v1.2.2 // indirect
	github.com/spf13/cast v1.3.0 // indirect
	github.com/spf13/cobra v0.0.6 // indirect
	github.com/spf13/jwalterweatherman v1.1.0 // indirect
	github.com/spf13/pflag v1.0.3 // indirect
	github.com/spf13/viper v1.6.2 // indirect
	github.com/subosito/gotenv v1.2.0 // indirect
	github.com/ugorji/go/codec v1.1.7 // indirect
	github.com/x-cray/logrus-prefixed-formatter v0.5.2 // indirect
	golang.org/x/crypto v0.0.0-20200128174031-69ecbb4d6d5d // indirect
	golang.org/x/net v0.0.0-20200226121028-0de0cce0169b // indirect
	golang.org/x/sys v0.0.0-20200302150141-5c8b2ff67527 // indirect
	golang.org/x/text v0.3.2 // indirect
	golang.org/x/xerrors v0.0.0-20191204190536-9bdfabe68543 // indirect
	gopkg.in/ini.v1 v1.51.0 // indirect
	gopkg.in/yaml.v2 v2.2.4 // indirect
)

// Disco's unmodified source, unpacked outside the repository by
// scripts/interop-disco.sh, which links it here.
replace github.com/mosaicnetworks/disco => ./.disco
