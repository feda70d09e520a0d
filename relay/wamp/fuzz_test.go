package wamp

import "testing"

// FuzzParse: any text gets a message or an error, never a panic; an
// accepted message's accessors never panic either.
func FuzzParse(f *testing.F) {
	for _, s := range []string{`[1,"main",{}]`, `[48,1,{},"p",[1],{"a":1}]`, `[70,5,{},["x"]]`,
		`[8,68,3,{},"io.babble.processing_offer"]`, `[]`, `[1e400]`, `[64,9007199254740993,{},"p"]`, `{"a":1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b)
		if err != nil {
			return
		}
		for i := 0; i < len(m.Fields)+1; i++ {
			m.ID(i)
			m.Int(i)
			m.URI(i)
			m.Dict(i)
			m.Payload(i)
		}
		if need, ok := minFields[m.Type]; ok && len(m.Fields) < need {
			t.Fatalf("accepted type %d with %d elements", m.Type, len(m.Fields))
		}
	})
}
